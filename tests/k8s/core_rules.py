"""FAKE (ported): what kube-apiserver refuses of the core requests the provider makes, word for word.

crdserver has no core API, so :mod:`tests.k8s.fake_core` serves Secrets, ConfigMaps, pods and
pod logs itself; it answers a wrong request with these messages. Each rule is ported from the
upstream source named beside it, Kubernetes v1.36 (k8s.io/apimachinery v0.36.4, the release
the test crdserver is built from; k8s.io/kubernetes for the core objects), and the conformance
test (tests/k8s/test_fake_core_conformance.py) checks every one.

Only what the provider sends is covered: object names, label keys and values, the size of a
Secret or ConfigMap, a ``kubernetes.io/dockerconfigjson`` Secret's content, the container and
the options of a pod log request.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any

# k8s.io/apimachinery pkg/util/validation/validation.go and pkg/api/validate/content/{dns,kube}.go
_DNS1123_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL + "(\\." + _DNS1123_LABEL + ")*"
_LABEL_KEY_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE_FMT = "(" + _LABEL_KEY_FMT + ")?"
CONFIG_MAP_KEY_FMT = "[-._a-zA-Z0-9]+"
#: core.MaxSecretSize (pkg/apis/core/types.go): a Secret's or ConfigMap's data, 1 MiB.
MAX_SECRET_SIZE = 1024 * 1024
DOCKER_CONFIG_JSON_KEY = ".dockerconfigjson"


def _regex_error(message: str, fmt: str, *examples: str) -> str:
    """validation.RegexError."""
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{fmt}')"


def dns1123_subdomain(value: str) -> list[str]:
    """validation.IsDNS1123Subdomain (util/validation/validation.go): every object name here."""
    errors = []
    if len(value) > 253:
        errors.append("must be no more than 253 characters")
    if not re.fullmatch(DNS1123_SUBDOMAIN_FMT, value):
        errors.append(
            _regex_error(
                "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                "'.', and must start and end with an alphanumeric character",
                DNS1123_SUBDOMAIN_FMT,
                "example.com",
            )
        )
    return errors


def label_key(value: str) -> list[str]:
    """content.IsLabelKey (api/validate/content/kube.go)."""
    prefix, slash, name = value.rpartition("/")
    errors = []
    if value.count("/") > 1:
        return [
            "a valid label key "
            + _regex_error(
                "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character",
                _LABEL_KEY_FMT,
                "MyName",
                "my.name",
                "123-abc",
            )
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if slash:
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors.extend(f"prefix part {message}" for message in dns1123_subdomain(prefix))
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 bytes")
    if not re.fullmatch(_LABEL_KEY_FMT, name):
        errors.append(
            "name part "
            + _regex_error(
                "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                "alphanumeric character",
                _LABEL_KEY_FMT,
                "MyName",
                "my.name",
                "123-abc",
            )
        )
    return errors


def label_value(value: str) -> list[str]:
    """content.IsLabelValue (api/validate/content/kube.go)."""
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 bytes")
    if not re.fullmatch(LABEL_VALUE_FMT, value):
        errors.append(
            _regex_error(
                "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                "and must start and end with an alphanumeric character",
                LABEL_VALUE_FMT,
                "MyValue",
                "my_value",
                "12345",
            )
        )
    return errors


def config_map_key(value: str) -> list[str]:
    """validation.IsConfigMapKey (util/validation/validation.go): a Secret's or ConfigMap's data key."""
    errors = []
    if len(value) > 253:
        errors.append("must be no more than 253 characters")
    if not re.fullmatch(CONFIG_MAP_KEY_FMT, value):
        errors.append(
            _regex_error(
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                CONFIG_MAP_KEY_FMT,
                "key.name",
                "KEY_NAME",
                "key-name",
            )
        )
    if value == ".":
        errors.append("must not be '.'")
    elif value == "..":
        errors.append("must not be '..'")
    elif value.startswith(".."):
        errors.append("must not start with '..'")
    return errors


@dataclass(frozen=True)
class FieldError:
    """field.Error (util/validation/field/errors.go): ``Error()`` is ``<field>: <ErrorBody()>``."""

    type: str  # "Invalid value", "Required value", "Too long", "Forbidden"
    field: str
    value: Any = None
    detail: str = ""

    @property
    def body(self) -> str:
        if self.type == "Invalid value":
            shown = (
                json.dumps(self.value, ensure_ascii=False) if isinstance(self.value, str) else str(self.value)
            )
            text = f"{self.type}: {shown}"
        else:  # Required, Forbidden, TooLong: the value is not shown
            text = self.type
        return f"{text}: {self.detail}" if self.detail else text

    def __str__(self) -> str:
        return f"{self.field}: {self.body}"


_CAUSE = {  # field.ErrorType, the cause's reason
    "Invalid value": "FieldValueInvalid",
    "Required value": "FieldValueRequired",
    "Too long": "FieldValueTooLong",
    "Forbidden": "FieldValueForbidden",
}


def invalid(kind: str, name: str, errors: list[FieldError]) -> dict[str, Any]:
    """errors.NewInvalid (api/errors/errors.go): 422, the errors aggregated (``[a, b]`` for several)."""
    unique = list(dict.fromkeys(str(error) for error in errors))
    aggregated = unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'{kind} "{name}" is invalid: {aggregated}',
        "reason": "Invalid",
        "details": {
            "name": name,
            "kind": kind,
            "causes": [
                {"reason": _CAUSE[error.type], "message": error.body, "field": error.field}
                for error in errors
            ],
        },
        "code": 422,
    }


def object_meta(body: dict[str, Any]) -> list[FieldError]:
    """ValidateObjectMeta (api/validation/objectmeta.go): the name (NameIsDNSSubdomain for a
    Secret or ConfigMap), then each label's key and value (v1validation.ValidateLabels)."""
    metadata = body.get("metadata") or {}
    name = metadata.get("name") or ""
    errors = (
        [FieldError("Invalid value", "metadata.name", name, message) for message in dns1123_subdomain(name)]
        if name
        else [FieldError("Required value", "metadata.name", detail="name or generateName is required")]
    )
    for key, value in (metadata.get("labels") or {}).items():
        errors += [FieldError("Invalid value", "metadata.labels", key, message) for message in label_key(key)]
        errors += [
            FieldError("Invalid value", "metadata.labels", value, message) for message in label_value(value)
        ]
    return errors


def secret(body: dict[str, Any]) -> list[FieldError]:
    """ValidateSecret (k8s.io/kubernetes pkg/apis/core/validation/validation.go)."""
    errors = object_meta(body)
    data = {key: base64.b64decode(value or "") for key, value in (body.get("data") or {}).items()}
    for key in data:
        errors += [
            FieldError("Invalid value", f"data[{key}]", key, message) for message in config_map_key(key)
        ]
    if sum(len(value) for value in data.values()) > MAX_SECRET_SIZE:
        errors.append(FieldError("Too long", "data", detail=f"may not be more than {MAX_SECRET_SIZE} bytes"))
    if body.get("type") == "kubernetes.io/dockerconfigjson":
        field = f"data[{DOCKER_CONFIG_JSON_KEY}]"
        if DOCKER_CONFIG_JSON_KEY not in data:
            errors.append(FieldError("Required value", field))
        else:
            problem = go_json_object_error(data[DOCKER_CONFIG_JSON_KEY])
            if problem:
                errors.append(FieldError("Invalid value", field, "<secret contents redacted>", problem))
    return errors


def config_map(body: dict[str, Any]) -> list[FieldError]:
    """ValidateConfigMap (k8s.io/kubernetes pkg/apis/core/validation/validation.go): the size error
    is on the whole object, ``field.NewPath("")``, which prints as ``[]``."""
    errors = object_meta(body)
    data, binary = body.get("data") or {}, body.get("binaryData") or {}
    size = 0
    for key, value in data.items():
        errors += [
            FieldError("Invalid value", f"data[{key}]", key, message) for message in config_map_key(key)
        ]
        size += len(value.encode())
    for key, value in binary.items():
        errors += [
            FieldError("Invalid value", f"binaryData[{key}]", key, message) for message in config_map_key(key)
        ]
        size += len(base64.b64decode(value))
    if size > MAX_SECRET_SIZE:
        errors.append(FieldError("Too long", "[]", detail=f"may not be more than {MAX_SECRET_SIZE} bytes"))
    return errors


def go_json_object_error(raw: bytes) -> str | None:
    """Why Go's ``json.Unmarshal(raw, &map[string]interface{}{})`` fails, in its words; None if it does not.

    The common cases only: empty input, a JSON value that is not an object, and malformed JSON
    (whose exact Go wording depends on the character; the first bad one is named as Go does).
    """
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        return "unexpected end of JSON input"
    stripped = text.lstrip(" \t\r\n")
    literal = next((word for word in ("null", "true", "false") if stripped[0] == word[0]), None)
    if literal:  # Go's scanner reads a literal letter by letter, and names the first wrong one
        for index, expected in enumerate(literal):
            if index >= len(stripped):
                return "unexpected end of JSON input"
            if stripped[index] != expected:
                return f"invalid character '{stripped[index]}' in literal {literal} (expecting '{expected}')"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        if error.pos >= len(text):
            return "unexpected end of JSON input"
        return f"invalid character '{text[error.pos]}' looking for beginning of value"
    if not isinstance(value, dict):
        go_type = {list: "array", str: "string", bool: "bool", type(None): ""}.get(type(value), "number")
        if go_type:
            return f"json: cannot unmarshal {go_type} into Go value of type map[string]interface {{}}"
    return None


def pod_log_options(pod: str, query: dict[str, str]) -> dict[str, Any] | None:
    """ValidatePodLogOptions (pkg/apis/core/validation/validation.go), as LogREST.Get
    (pkg/registry/core/pod/rest/log.go) answers it: ``errors.NewInvalid(PodLogOptions, pod)``."""
    errors = []
    tail = query.get("tailLines")
    if tail is not None and int(tail) < 0:
        errors.append(
            FieldError("Invalid value", "tailLines", int(tail), "must be greater than or equal to 0")
        )
    limit = query.get("limitBytes")
    if limit is not None and int(limit) < 1:
        errors.append(FieldError("Invalid value", "limitBytes", int(limit), "must be greater than 0"))
    if "sinceSeconds" in query and "sinceTime" in query:
        errors.append(
            FieldError(
                "Forbidden", "[]", detail="at most one of `sinceTime` or `sinceSeconds` may be specified"
            )
        )
    elif "sinceSeconds" in query and int(query["sinceSeconds"]) < 1:
        errors.append(
            FieldError("Invalid value", "sinceSeconds", int(query["sinceSeconds"]), "must be greater than 0")
        )
    return invalid("PodLogOptions", pod, errors) if errors else None


def container_not_valid(container: str, pod: str) -> str:
    """validateContainer (pkg/registry/core/pod/strategy.go), answered 400 BadRequest by LogLocation."""
    return f"container {container} is not valid for pod {pod}"
