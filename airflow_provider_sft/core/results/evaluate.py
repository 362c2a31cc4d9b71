"""What a user does with a new model first: ask it something it never saw, and measure its
perplexity on held-out conversations.

Runs on the CPU with transformers (a GPU when torch sees one); no Airflow. The perplexity is
``exp`` of the mean negative log-likelihood of the *assistant* tokens of each conversation's
last turn, given everything before it (the prompt is not scored: the model was trained on the
replies, not on the questions). The validation records are read and scored, never logged or
returned: only counts and the perplexity leave this module.

The bundled held-out file (``core/data/chat_sft_heldout.jsonl``) holds conversations written
apart from the bundled training set: no question or reply of it is in the training data (a test
checks it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, cast

from airflow_provider_sft.core import jsonio
from airflow_provider_sft.core.dataset.records import BadRecordError, RecordMapping, chat_messages
from airflow_provider_sft.core.errors import InvalidParameterError

HELD_OUT_DATASET_NAME = "chat_sft_heldout.jsonl"
#: A question neither the bundled training data nor the held-out file asks (it is logged; they are not).
DEFAULT_PROMPT = "What is the capital of New Zealand?"


def bundled_held_out_path() -> Path:
    """The bundled held-out chat file (messages format), a file inside the installed package."""
    return Path(str(resources.files("airflow_provider_sft.core") / "data" / HELD_OUT_DATASET_NAME))


@dataclass(frozen=True)
class Evaluation:
    """The result: what the model replied to ``prompt``, and its perplexity on the validation file."""

    model: str
    prompt: str
    reply: str
    perplexity: float
    mean_nll: float
    scored_tokens: int
    conversations: int
    validation_file: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_conversations(path: Path, *, field: str = "validation_file") -> list[list[dict[str, Any]]]:
    """The conversations of a messages-format JSONL file; a bad record is one error naming ``field``,
    the line and the problem (never the record's text)."""
    if not path.is_file():
        raise InvalidParameterError({field: f"{str(path)!r} is not a file"})
    conversations = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {number}"
            try:
                messages = chat_messages(jsonio.loads(line), where, RecordMapping.MESSAGES)
            except (BadRecordError, ValueError) as error:
                raise InvalidParameterError({field: str(error).splitlines()[0]}) from None
            if messages[-1]["role"] != "assistant":
                raise InvalidParameterError({field: f"{where}: the last message is not the assistant's"})
            conversations.append(messages)
    if not conversations:
        raise InvalidParameterError({field: f"{str(path)!r} has no conversation"})
    return conversations


class LoadedModel:
    """A causal LM and its tokenizer, loaded once for the reply and the perplexity."""

    def __init__(self, location: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.location = location
        self.tokenizer = AutoTokenizer.from_pretrained(location)
        self.model = AutoModelForCausalLM.from_pretrained(location)
        self.model.eval()

    def _encode(self, messages: list[dict[str, Any]], *, generation_prompt: bool) -> list[int]:
        encoded: Any = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True
        )
        return list(encoded["input_ids"])

    def reply(self, prompt: str, *, max_new_tokens: int = 32) -> str:
        """The greedy reply to one user turn (deterministic: the same model, the same reply)."""
        import torch

        ids = torch.tensor([self._encode([{"role": "user", "content": prompt}], generation_prompt=True)])
        with torch.no_grad():
            output = self.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=self.tokenizer.eos_token_id,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        return cast(str, self.tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)).strip()

    def negative_log_likelihood(self, conversations: list[list[dict[str, Any]]]) -> tuple[float, int]:
        """Summed NLL (nats) of each conversation's last (assistant) turn, and the tokens scored."""
        import torch

        total, tokens = 0.0, 0
        for messages in conversations:
            prompt = self._encode(messages[:-1], generation_prompt=True)
            full = self._encode(messages, generation_prompt=False)
            if full[: len(prompt)] != prompt or len(full) <= len(prompt):
                raise InvalidParameterError(
                    {"validation_file": "the chat template does not render the reply after its prompt"}
                )
            ids = torch.tensor([full])
            labels = ids.clone()
            labels[0, : len(prompt)] = -100  # the prompt is given, not scored
            with torch.no_grad():
                mean = self.model(input_ids=ids, labels=labels).loss.item()
            scored = len(full) - len(prompt)
            total += mean * scored
            tokens += scored
        return total, tokens


def evaluate_model(
    location: str,
    *,
    prompt: str = DEFAULT_PROMPT,
    validation_file: Path | None = None,
    max_new_tokens: int = 32,
) -> Evaluation:
    """Load the model in the directory ``location`` (a published one is fetched first:
    :func:`~airflow_provider_sft.core.publish.fetch.fetch_model`), reply to ``prompt`` and compute
    the perplexity on ``validation_file`` (default: the bundled held-out file)."""
    path = validation_file or bundled_held_out_path()
    conversations = read_conversations(path)  # before the model is loaded: a bad file costs nothing
    model = LoadedModel(location)
    reply = model.reply(prompt, max_new_tokens=max_new_tokens)
    total, tokens = model.negative_log_likelihood(conversations)
    mean_nll = total / tokens
    return Evaluation(
        model=location,
        prompt=prompt,
        reply=reply,
        perplexity=math.exp(mean_nll),
        mean_nll=mean_nll,
        scored_tokens=tokens,
        conversations=len(conversations),
        validation_file=str(path),
    )


def model_location(extra: dict[str, Any], *, exists: Any = None) -> tuple[str | None, str | None]:
    """Where the model an asset event's ``extra`` names is: ``(directory, None)`` when this machine
    sees the exported directory (``model_path``, unless ``exported_uri`` says it is a path in the
    training pods, ``pvc://``, which a worker's own directory could shadow), else
    ``(None, published URI)`` to fetch (``model_uri``: an S3 run prefix or a Hub commit)."""
    exists = exists or (lambda path: Path(path, "config.json").is_file())
    model_path = extra.get("model_path")
    on_a_worker = str(extra.get("exported_uri") or "file://").startswith("file://")  # not the pods' path
    if model_path and on_a_worker and exists(model_path):
        return str(model_path), None
    uri = str(extra.get("model_uri") or "")
    if uri.startswith(("hf://", "s3://")):
        return None, uri
    raise InvalidParameterError(
        {
            "model": f"{model_path!r} is not a model directory on this worker and {uri!r} is not a "
            "published model (s3:// or hf://): run the evaluation where the workspace is mounted, "
            "or publish the model"
        }
    )
