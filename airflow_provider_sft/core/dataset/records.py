"""Chat-record validation and the opt-in mappings from other common layouts.

Every record that reaches ``train.jsonl`` is ``{"messages": [{"role", "content"}, ...]}``
with roles ``system|user|assistant``, non-blank string content and at least one
assistant turn. Other layouts are converted only when the user names a mapping:
nothing is guessed silently.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Any, Literal, NoReturn, overload

from airflow_provider_sft.core.errors import DatasetError

ROLES = ("system", "user", "assistant")
_ROLE_SET = frozenset(ROLES)


class BadRecordError(DatasetError):
    """One record is not usable; with ``on_bad_record="skip"`` it is counted and skipped."""


class RecordMapping(str, Enum):
    """How records are read: ``messages`` as is, or converted from another layout."""

    MESSAGES = "messages"
    PROMPT_COMPLETION = "prompt_completion"  # {"prompt", "completion"[, "system"]}
    INSTRUCTION = "instruction"  # {"instruction"[, "input"], "output"[, "system"]} (Alpaca)

    @property
    def fields(self) -> tuple[str, ...]:
        """Columns a columnar reader (Parquet/CSV) must provide; optional ones are read when present."""
        return _FIELDS[self]


_FIELDS = {
    RecordMapping.MESSAGES: ("messages",),
    RecordMapping.PROMPT_COMPLETION: ("prompt", "completion"),
    RecordMapping.INSTRUCTION: ("instruction", "output"),
}
OPTIONAL_FIELDS = {
    RecordMapping.MESSAGES: (),
    RecordMapping.PROMPT_COMPLETION: ("system",),
    RecordMapping.INSTRUCTION: ("input", "system"),
}


def validate_messages(messages: Any, where: str) -> bool:
    """Raise :class:`BadRecordError` naming ``where`` and the field; return whether messages are exactly role+content.

    The loop is the resolver's hot path (every message of every record): it checks with
    cheap type tests and, only when something is wrong, walks again to say exactly what.
    """
    if type(messages) is not list or not messages:
        _explain(messages, where)
    plain, has_assistant = True, False
    for message in messages:
        if type(message) is not dict:
            _explain(messages, where)
        role, content = message.get("role"), message.get("content")
        if role not in _ROLE_SET or type(content) is not str or not content or content.isspace():
            _explain(messages, where)
        has_assistant = has_assistant or role == "assistant"
        plain = plain and len(message) == 2
    if not has_assistant:
        raise BadRecordError(f"{where}: 'messages' has no assistant turn to train on")
    return plain


def _explain(messages: Any, where: str) -> NoReturn:
    """The precise error for messages the fast check rejected."""
    if not isinstance(messages, list) or not messages:
        raise BadRecordError(f"{where}: field 'messages' must be a non-empty list")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRecordError(f"{where}: messages[{index}] must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            got = "another value" if isinstance(role, str) else type(role).__name__  # never the data itself
            raise BadRecordError(
                f"{where}: messages[{index}].role must be one of {', '.join(ROLES)}, got {got}"
            )
        content = message.get("content")
        if not isinstance(content, str):
            raise BadRecordError(
                f"{where}: messages[{index}].content must be a string, got {type(content).__name__}"
            )
        if not content.strip():
            raise BadRecordError(f"{where}: messages[{index}].content is empty")
    raise BadRecordError(
        f"{where}: field 'messages' is invalid"
    )  # unreachable for what the fast check rejects


@overload
def _text(record: dict[str, Any], field: str, where: str, *, required: Literal[True]) -> str: ...
@overload
def _text(record: dict[str, Any], field: str, where: str, *, required: bool) -> str | None: ...
def _text(record: dict[str, Any], field: str, where: str, *, required: bool) -> str | None:
    value = record.get(field)
    if value is None:
        if required:
            raise BadRecordError(f"{where}: missing field {field!r}")
        return None
    if not isinstance(value, str):
        raise BadRecordError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise BadRecordError(f"{where}: field {field!r} is empty")
    return value


def _with_system(record: dict[str, Any], where: str, turns: list[dict[str, str]]) -> list[dict[str, str]]:
    system = _text(record, "system", where, required=False)
    return ([{"role": "system", "content": system}] if system and system.strip() else []) + turns


def _from_messages(record: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if "messages" not in record:
        keys = ", ".join(sorted(str(key)[:40] for key in record)[:8]) or "none"  # field names, cut short
        raise BadRecordError(
            f"{where}: missing field 'messages' (fields: {keys}; for prompt/completion or "
            "instruction/output records set mapping='prompt_completion' or 'instruction')"
        )
    messages = record["messages"]
    if not validate_messages(messages, where):
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    return messages


def _from_prompt_completion(record: dict[str, Any], where: str) -> list[dict[str, str]]:
    prompt = _text(record, "prompt", where, required=True)
    completion = _text(record, "completion", where, required=True)
    return _with_system(
        record, where, [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    )


def _from_instruction(record: dict[str, Any], where: str) -> list[dict[str, str]]:
    instruction = _text(record, "instruction", where, required=True)
    extra = _text(record, "input", where, required=False)
    output = _text(record, "output", where, required=True)
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return _with_system(
        record, where, [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    )


_CONVERTERS: dict[RecordMapping, Callable[[dict[str, Any], str], list[dict[str, Any]]]] = {
    RecordMapping.MESSAGES: _from_messages,
    RecordMapping.PROMPT_COMPLETION: _from_prompt_completion,
    RecordMapping.INSTRUCTION: _from_instruction,
}


def chat_messages(record: Any, where: str, mapping: RecordMapping) -> list[dict[str, Any]]:
    """The record's chat messages under ``mapping``, validated; :class:`BadRecordError` otherwise."""
    if not isinstance(record, dict):
        raise BadRecordError(f"{where}: record must be a JSON object, got {type(record).__name__}")
    return _CONVERTERS[mapping](record, where)
