"""Build a tiny causal LM and a locally trained tokenizer: no network, a few seconds.

The embedded demo, the tests and the benchmarks train this model so that nothing
downloads weights. It is an ordinary Hugging Face model directory (Llama
architecture, ChatML chat template, ``eos_token`` = the turn terminator so that
instructlab-training's masking teaches the model to stop).

    sft-build-tiny-model OUT_DIR [--dataset JSONL]
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from airflow_provider_sft.core.sample_data import bundled_dataset_path

if TYPE_CHECKING:
    from transformers import LlamaConfig, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _texts(dataset: Path) -> Iterable[str]:
    with dataset.open("rb") as handle:
        for line in handle:
            if line.strip():
                for message in orjson.loads(line)["messages"]:
                    yield f"{message['role']}\n{message['content']}"


def build_tokenizer(
    dataset: str | Path | None = None, *, vocab_size: int = 512, max_positions: int = 512
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``dataset``'s text (default: the bundled dataset)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(_texts(Path(dataset) if dataset else bundled_dataset_path()))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            show_progress=False,
            special_tokens=SPECIAL_TOKENS,
            # Byte-level alphabet: any text tokenizes, no UNK for unseen prompts.
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",  # the turn terminator: labels then include it
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=max_positions,
    )
    hf_tokenizer.chat_template = CHAT_TEMPLATE
    return hf_tokenizer


def model_config(
    tokenizer: PreTrainedTokenizerFast,
    *,
    hidden_size: int = 256,
    num_layers: int = 4,
    max_positions: int = 512,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int | None = None,
) -> LlamaConfig:
    """A Llama config of this shape for ``tokenizer`` (its vocabulary, its special tokens; tied embeddings)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_model(
    out_dir: str | Path,
    *,
    dataset: str | Path | None = None,
    vocab_size: int = 512,
    hidden_size: int = 256,
    num_layers: int = 4,
    max_positions: int = 512,
    seed: int = 0,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int | None = None,
    dtype: str | None = None,
) -> Path:
    """Write a tiny Llama model + tokenizer trained on ``dataset``'s text to ``out_dir``.

    The shape arguments let the GPU check (``scripts/gpu_check.py``) build a model big enough to
    measure with the same tokenizer; ``dtype`` (``"bfloat16"``) is the dtype its weights are saved in,
    as a published checkpoint's are (default: float32).
    """
    import torch
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    hf_tokenizer = build_tokenizer(dataset, vocab_size=vocab_size, max_positions=max_positions)
    config = model_config(
        hf_tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        max_positions=max_positions,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
    )
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    model = LlamaForCausalLM(config)
    if dtype is not None:
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(out)
    hf_tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out_dir", help="directory to write the model to")
    parser.add_argument("--dataset", help="chat JSONL whose text trains the tokenizer (default: bundled)")
    args = parser.parse_args(argv)
    print(build_tiny_model(args.out_dir, dataset=args.dataset))


if __name__ == "__main__":
    main()
