"""Chat samples of an exact token length under a model's chat template, for the data tests.

The assistant's answer is a run of ``" 1"``, one token each in the tiny model's tokenizer; the
length is checked against the tokenizer itself, so a sample is never silently a token off.
"""

from __future__ import annotations


def chat(question: str, words: int) -> dict:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": " ".join(["1"] * words)},
        ]
    }


def token_length(tokenizer, sample: dict) -> int:
    return len(tokenizer.apply_chat_template(sample["messages"], tokenize=True, return_dict=False))


def sized_sample(tokenizer, tokens: int, question: str = "q") -> dict:
    """A sample of exactly ``tokens`` tokens (the template's own included)."""
    words = tokens - token_length(tokenizer, chat(question, 0))
    assert words >= 0, f"{tokens} tokens is under the template's overhead for {question!r}"
    sample = chat(question, words)
    assert token_length(tokenizer, sample) == tokens
    return sample
