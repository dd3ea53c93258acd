"""TensorFlow Serving's REST protocol, without the HTTP: paths, request JSON to tensors, outputs
to JSON, and errors with TF Serving's status codes (`g3doc/api_rest.md` in tensorflow/serving).

A request is parsed as TF Serving parses it: `instances` (row format) or `inputs` (columnar),
an optional `signature_name`, strings as UTF-8 text or `{"b64": ...}`; the answer is
`predictions` or `outputs`, string outputs named `*_bytes` as `{"b64": ...}`, floats written
in their shortest float32 form, `NaN` and `Infinity` as the tokens TF Serving writes. Every
error is a one-line message with the canonical code TF Serving would give, hence its HTTP
status. Two deliberate differences: a uint8 value outside 0..255 is refused (TF Serving wraps
it), and messages never echo the whole request.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

# TF Serving's mapping from canonical error codes to HTTP (model_servers/http_server.cc).
HTTP_STATUS = {"CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
               "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
               "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
               "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
               "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}
_CANONICAL = {1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
              5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED",
              8: "RESOURCE_EXHAUSTED", 9: "FAILED_PRECONDITION", 10: "ABORTED",
              11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED", 13: "INTERNAL", 14: "UNAVAILABLE",
              15: "DATA_LOSS", 16: "UNAUTHENTICATED"}

# TF Serving's path patterns (model_servers/http_rest_api_util.cc), without version labels.
_PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+))?:(classify|regress|predict)",
                           re.IGNORECASE)
_MODEL_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+))?(?:/(metadata))?",
                         re.IGNORECASE)
_BOOT_LINES = ("Graph execution error:", "Detected at node", "<stack traces unavailable>")
_QUOTE_LIMIT = 60


class RestError(Exception):
    """A request TF Serving would refuse: its canonical code and a one-line message."""

    def __init__(self, code: str, message: str):
        super().__init__(" ".join(message.split()))
        self.code = code

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]


def invalid(message: str) -> RestError:
    return RestError("INVALID_ARGUMENT", message)


class Route(NamedTuple):
    """What an API path asks for: `verb` is predict (classify, regress), status or metadata."""

    model: str
    version: int | None
    verb: str


def route(method: str, path: str) -> Route:
    """The model, version and verb of `METHOD /v1/...`, or TF Serving's 'Malformed request'."""
    match = method == "POST" and _PREDICT_PATH.fullmatch(path)
    if match:
        return Route(match[1], _version(match[2]), match[3].lower())
    match = method == "GET" and _MODEL_PATH.fullmatch(path)
    if match and match[1]:
        return Route(match[1], _version(match[2]), "metadata" if match[3] else "status")
    if match:
        raise invalid("Missing model name in request.")
    raise invalid(f"Malformed request: {method} {path}")


def _version(text: str | None) -> int | None:
    return None if text is None else int(text)


def _quote(value: Any) -> str:
    """A JSON value for an error message, cut short: a request can be megabytes."""
    text = json.dumps(value)
    return text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT] + "..."


def parse_body(body: bytes) -> dict:
    """The request's JSON object; NaN and Infinity are accepted, as TF Serving accepts them."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise invalid(f"JSON Parse error: {e}") from None
    if not isinstance(document, dict):
        raise invalid(f"JSON Value: {_quote(document)} Is not object")
    return document


def signature_name(document: dict) -> str:
    """The requested signature, `serving_default` when the request names none."""
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid("'signature_name' key must be a string value.")
    return name or "serving_default"


def request_tensors(document: dict, specs: dict[str, tf.TensorSpec],
                    ) -> tuple[dict[str, np.ndarray], bool]:
    """The input tensors of a predict request and whether it used the row format."""
    if "instances" in document and "inputs" in document:
        raise invalid("Not formatted correctly expecting only one of 'inputs' or 'instances' "
                      "keys to exist")
    if "instances" in document:
        return _rows(document["instances"], specs), True
    if "inputs" in document:
        return _columns(document["inputs"], specs), False
    raise invalid("Missing 'inputs' or 'instances' key")


def _is_named(value: Any) -> bool:
    """A JSON object of named inputs, as opposed to a `{"b64": ...}` value."""
    return isinstance(value, dict) and not _is_b64(value)


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _rows(instances: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """Row format: one list item per example, a value or an object of named inputs."""
    if not isinstance(instances, list):
        raise invalid("Expecting 'instances' to be an list/array")
    if not instances:
        raise invalid("No values in 'instances' array")
    if not _is_named(instances[0]):
        if len(specs) > 1:
            raise invalid("instances is a plain list, but expecting list of objects as "
                          "multiple input tensors required as per tensorinfo_map")
        if any(_is_named(item) for item in instances):
            raise invalid("Expecting value/list but got object in the input list")
        (name, spec), = specs.items()
        return {name: to_array(instances, spec, name)}
    for i, item in enumerate(instances):
        if not _is_named(item) or set(item) != set(specs):
            raise invalid(f"Failed to process element: {i} of 'instances' list. JSON object "
                          f"keys must be equal to: {','.join(sorted(specs))}")
    return {name: to_array([item[name] for item in instances], spec, name)
            for name, spec in specs.items()}


def _columns(inputs: Any, specs: dict[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    """Columnar format: one value for the only input, or an object of named inputs."""
    if not _is_named(inputs):
        if len(specs) > 1:
            raise invalid("inputs is a plain value/list, but expecting an object as multiple "
                          "input tensors required as per tensorinfo_map")
        (name, spec), = specs.items()
        return {name: to_array(inputs, spec, name)}
    missing = sorted(set(specs) - set(inputs))
    if missing:
        raise invalid(f"Missing named input: {missing[0]} in 'inputs' object.")
    return {name: to_array(inputs[name], spec, name) for name, spec in specs.items()}


def to_array(value: Any, spec: tf.TensorSpec, name: str) -> np.ndarray:
    """A JSON value (nested lists) as an array of the input's dtype; its shape is the graph's
    to check, as in TF Serving."""
    if spec.dtype == tf.string:
        return _string_array(value, name)
    try:
        array = np.asarray(value)
    except ValueError:
        raise invalid(f"Input {name}: lists of unequal length at the same level; a tensor "
                      "must be dense") from None
    dtype = spec.dtype.as_numpy_dtype
    wanted = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}.get(np.dtype(dtype).kind, "")
    if array.dtype.kind not in wanted or array.dtype == object:
        raise invalid(f"JSON Value: {_quote(value)} Type: {_json_type(array)} is not of "
                      f"expected type: {spec.dtype.name} (input {name})")
    if array.dtype.kind in "iu" and np.dtype(dtype).kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise invalid(f"Input {name}: values {array.min()}..{array.max()} are outside "
                          f"the range of {spec.dtype.name}, {info.min}..{info.max}")
    return array.astype(dtype)


def _json_type(array: np.ndarray) -> str:
    return {"b": "Bool", "U": "String", "O": "Object or mixed"}.get(array.dtype.kind, "Number")


def _string_array(value: Any, name: str) -> np.ndarray:
    """Strings as bytes: UTF-8 text, or base64 inside `{"b64": ...}`; nested lists kept dense."""
    def convert(item: Any) -> Any:
        if isinstance(item, list):
            return [convert(element) for element in item]
        if isinstance(item, str):
            return item.encode("utf-8")
        if _is_b64(item):
            try:
                return base64.b64decode(item["b64"], validate=True)
            except (binascii.Error, ValueError):
                raise invalid(f"Unable to base64 decode (input {name})") from None
        raise invalid(f"JSON Value: {_quote(item)} is not of expected type: string "
                      f"(input {name})")

    nested = convert(value)
    shape = _dense_shape(nested, name)
    flat = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=object)
    flat[:] = list(_leaves(nested))
    return flat.reshape(shape)


def _dense_shape(nested: Any, name: str) -> tuple[int, ...]:
    """The shape of nested lists of leaves, or an error if they are ragged."""
    if not isinstance(nested, list):
        return ()
    shapes = {_dense_shape(item, name) for item in nested}
    if len(shapes) > 1:
        raise invalid(f"Input {name}: lists of unequal length at the same level; a tensor "
                      "must be dense")
    return (len(nested),) + (shapes.pop() if shapes else ())


def _leaves(nested: Any):
    if isinstance(nested, list):
        for item in nested:
            yield from _leaves(item)
    else:
        yield nested


def format_outputs(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    """`{"predictions": [...]}` (one item per example) or `{"outputs": ...}`, as TF Serving
    writes them; a single output is written without its name."""
    values = {name: _json_values(name, array) for name, array in sorted(outputs.items())}
    if not row_format:
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    sizes = {len(array) for array in outputs.values() if np.ndim(array)}
    if len(sizes) != 1 or any(np.ndim(array) == 0 for array in outputs.values()):
        raise RestError("INVALID_ARGUMENT", "outputs have no common batch size, so they "
                        "cannot be written as rows: use the columnar format ('inputs')")
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [dict(zip(values, row)) for row in zip(*values.values())]}


def _json_values(name: str, array: np.ndarray) -> Any:
    """Nested lists of JSON values; float32 in its shortest decimal form (0.1, not
    0.10000000149011612), strings as text, or base64 objects for names ending in `_bytes`."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        shortest = array.astype(str) if array.dtype == np.float32 else array
        return shortest.astype(np.float64).tolist()
    if array.dtype == object or array.dtype.kind == "S":
        encode = ((lambda raw: {"b64": base64.b64encode(raw).decode("ascii")})
                  if name.endswith("_bytes") else
                  (lambda raw: raw.decode("utf-8", errors="replace")))
        return np.frompyfunc(encode, 1, 1)(array).tolist() if array.ndim else encode(array.item())
    return array.tolist()


def from_tf_error(error: tf.errors.OpError) -> RestError:
    """TensorFlow's error as TF Serving reports it: its code, and the line that says why."""
    lines = [line.strip() for line in (error.message or "").splitlines()]
    reasons = [line for line in lines
               if line and not line.startswith(_BOOT_LINES) and not line.startswith("[[")]
    reason = re.sub(r"\s*\[Op:[^\]]*\]$", "", reasons[-1] if reasons else type(error).__name__)
    return RestError(_CANONICAL.get(error.error_code, "UNKNOWN"), reason)


def dumps(payload: dict) -> bytes:
    """JSON as TF Serving writes it, with `NaN` and `Infinity` tokens."""
    return json.dumps(payload, allow_nan=True, separators=(",", ":")).encode("utf-8")
