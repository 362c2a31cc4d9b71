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

import orjson

from airflow_provider_sft.core.sample_data import bundled_dataset_path

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


def build_tiny_model(
    out_dir: str | Path,
    *,
    dataset: str | Path | None = None,
    vocab_size: int = 512,
    hidden_size: int = 256,
    num_layers: int = 4,
    max_positions: int = 512,
    seed: int = 0,
) -> Path:
    """Write a tiny Llama model + tokenizer trained on ``dataset``'s text to ``out_dir``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out_dir)
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
    config = LlamaConfig(
        vocab_size=len(hf_tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=hf_tokenizer.bos_token_id,
        eos_token_id=hf_tokenizer.eos_token_id,
        pad_token_id=hf_tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(out)
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
