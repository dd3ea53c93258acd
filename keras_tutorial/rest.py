"""TensorFlow Serving's REST protocol, without the HTTP: paths, request JSON to tensors, outputs
to JSON, and errors with TF Serving's status codes (`g3doc/api_rest.md` in tensorflow/serving).

A request is parsed as TF Serving parses it: `instances` (row format) or `inputs` (columnar),
an optional `signature_name`, strings as UTF-8 text or `{"b64": ...}`; the answer is
`predictions` or `outputs`, string outputs named `*_bytes` as `{"b64": ...}`, floats written
in their shortest float32 form, `NaN` and `Infinity` as the tokens TF Serving writes. Every
error is a one-line message with the canonical code TF Serving would give, hence its HTTP
status. Two deliberate differences: a uint8 value outside 0..255 is refused (TF Serving wraps
it), and messages never echo the whole request.

Paths are matched as TF Serving matches them: on the request's raw path (never on a URL rebuilt
from its headers), versions in ASCII digits that fit in an int64, the model name
percent-decoded afterwards.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import re
import urllib.parse
from typing import Any, NamedTuple

import numpy as np
import orjson
import tensorflow as tf
from tensorflow.core.protobuf import error_codes_pb2

from keras_tutorial import json_arrays, versions

# TF Serving's mapping from canonical error codes to HTTP (model_servers/http_server.cc).
HTTP_STATUS = {"CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
               "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
               "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
               "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
               "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}

# TF Serving's path patterns (model_servers/http_rest_api_util.cc), without version labels;
# its RE2 `\d` is ASCII only.
_PREDICT_PATH = re.compile(r"/v1/models/([^/:]+)(?:/versions/([0-9]+))?:(classify|regress|predict)",
                           re.IGNORECASE)
_MODEL_PATH = re.compile(r"/v1/models(?:/([^/:]+))?(?:/versions/([0-9]+))?(?:/(metadata))?",
                         re.IGNORECASE)
_INT64_MAX = 2**63 - 1
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


def route(method: str, raw_path: str) -> Route:
    """The model, version and verb of `METHOD /v1/...` (the path as the request line has it,
    percent-escapes and all), or TF Serving's 'Malformed request'."""
    match = method == "POST" and _PREDICT_PATH.fullmatch(raw_path)
    if match:
        return Route(_model_name(match[1]), _version(match[2]), match[3].lower())
    match = method == "GET" and _MODEL_PATH.fullmatch(raw_path)
    if match and match[1]:
        return Route(_model_name(match[1]), _version(match[2]),
                     "metadata" if match[3] else "status")
    if match:
        raise invalid("Missing model name in request.")
    raise invalid(f"Malformed request: {method} {cut(raw_path)}")


def _model_name(escaped: str) -> str:
    try:
        return urllib.parse.unquote(escaped, errors="strict")
    except UnicodeDecodeError:
        raise invalid(f"Failed to decode model name: {cut(escaped)}") from None


def _version(digits: str | None) -> int | None:
    """A version's ASCII digits as TF Serving's int64, or its error."""
    if digits is None:
        return None
    if len(digits) > 19 or int(digits) > _INT64_MAX:
        raise invalid(f"Failed to convert version: {cut(digits)} to numeric.")
    return int(digits)


def cut(text: str) -> str:
    """Text from a request, cut short for an error message."""
    return text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT] + "..."


class _Text(str):
    """Text already written as JSON, on _quote's stack."""


def _quote(value: Any) -> str:
    """A JSON value for an error message, written only as far as the message shows it: a
    request can be megabytes, or nested a thousand deep."""
    pieces, size, stack = [], 0, [value]
    while stack and size <= _QUOTE_LIMIT:
        item = stack.pop()
        if isinstance(item, np.ndarray):
            item = item.ravel()[:_QUOTE_LIMIT].tolist() if item.ndim else item.item()
        if isinstance(item, list):
            stack.extend(reversed(_joined([[element] for element in item[:_QUOTE_LIMIT]],
                                          "[", "]")))
        elif isinstance(item, dict):
            pairs = itertools.islice(item.items(), _QUOTE_LIMIT)
            stack.extend(reversed(_joined([[_Text(json.dumps(key) + ": "), element]
                                           for key, element in pairs], "{", "}")))
        else:
            piece = item if isinstance(item, _Text) else json.dumps(item)
            pieces.append(piece)
            size += len(piece)
    return cut("".join(pieces))


def _joined(groups: list[list], opening: str, closing: str) -> list:
    """The tokens of a JSON list or object: its groups between brackets, comma-separated."""
    tokens = [_Text(opening)]
    for i, group in enumerate(groups):
        tokens += ([_Text(", ")] if i else []) + group
    return tokens + [_Text(closing)]


def parse_body(body: bytes) -> dict:
    """The request's JSON object, its dense numeric arrays already numpy arrays; NaN and
    Infinity are accepted, as TF Serving accepts them."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    try:
        document = json_arrays.loads(body)
    except (ValueError, RecursionError) as e:
        raise invalid(f"JSON Parse error: {cut(' '.join(str(e).split()))}") from None
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
    if not isinstance(instances, list) and not (isinstance(instances, np.ndarray)
                                                and instances.ndim):
        raise invalid("Expecting 'instances' to be an list/array")
    if not len(instances):
        raise invalid("No values in 'instances' array")
    if not _is_named(instances[0]):
        if len(specs) > 1:
            raise invalid("instances is a plain list, but expecting list of objects as "
                          "multiple input tensors required as per tensorinfo_map")
        if isinstance(instances, list) and any(_is_named(item) for item in instances):
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
    """A JSON value (nested lists, or an array parse_body lifted) as an array of the input's
    dtype; its shape is the graph's to check, as in TF Serving."""
    _check_depth(value, name)
    if spec.dtype == tf.string:
        return _string_array(value, name)
    try:
        array = np.asarray(value)
    except ValueError:
        raise _ragged(name) from None
    dtype = spec.dtype.as_numpy_dtype
    wanted = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}.get(np.dtype(dtype).kind, "")
    if (array.dtype.kind not in wanted or array.dtype == object
            or array.dtype.kind != "b" and _holds_bool(value)):
        raise invalid(f"JSON Value: {_quote(value)} Type: {_json_type(value, array)} is not of "
                      f"expected type: {spec.dtype.name} (input {name}){_b64_hint(value)}")
    if array.dtype.kind in "iu" and np.dtype(dtype).kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise invalid(f"Input {name}: values {array.min()}..{array.max()} are outside "
                          f"the range of {spec.dtype.name}, {info.min}..{info.max}")
    return array.astype(dtype)


def _check_depth(value: Any, name: str) -> None:
    """Refuses lists nested deeper than a tensor can be, before anything recurses into them."""
    depth = 0
    while isinstance(value, (list, np.ndarray)) and len(value):
        depth += value.ndim if isinstance(value, np.ndarray) else 1
        if depth > json_arrays.MAX_RANK:
            raise invalid(f"Input {name}: lists nested more than {json_arrays.MAX_RANK} deep; "
                          "a tensor has at most that many dimensions")
        value = None if isinstance(value, np.ndarray) else value[0]


def _ragged(name: str) -> RestError:
    return invalid(f"Input {name}: lists of unequal length at the same level, or nested too "
                   "deep; a tensor must be dense")


def _holds_bool(value: Any) -> bool:
    """Whether nested lists hold a JSON true or false anywhere (numpy would read them as 1/0)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool):
            return True
    return False


def _b64_hint(value: Any) -> str:
    """What to do about `{"b64": ...}` values sent to a numeric input: encoded image files
    are `serve_images`'s to read."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif _is_b64(item):
            return '; to send encoded image files, add "signature_name": "serve_images"'
    return ""


def _json_type(value: Any, array: np.ndarray) -> str:
    if array.dtype.kind != "b" and _holds_bool(value):
        return "Bool"
    return {"b": "Bool", "U": "String", "O": "Object or mixed"}.get(array.dtype.kind, "Number")


def _string_array(value: Any, name: str) -> np.ndarray:
    """Strings as bytes: UTF-8 text, or base64 inside `{"b64": ...}`; nested lists kept dense."""
    leaves, shape = _flatten(value, name)
    flat = np.empty(len(leaves), dtype=object)
    flat[:] = [_string_bytes(leaf, name) for leaf in leaves]
    return flat.reshape(shape)


def _string_bytes(item: Any, name: str) -> bytes:
    if isinstance(item, str):
        try:
            return item.encode("utf-8")
        except UnicodeEncodeError:
            raise invalid(f"Input {name}: a string is not valid UTF-8 text (an unpaired "
                          "surrogate such as \\ud800)") from None
    if _is_b64(item):
        try:
            return base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"Unable to base64 decode (input {name})") from None
    raise invalid(f"JSON Value: {_quote(item)} is not of expected type: string "
                  f"(input {name})")


def _flatten(value: Any, name: str) -> tuple[list, tuple[int, ...]]:
    """The leaves of nested lists in order, and their shape; ragged lists are refused."""
    level, shape = [value], []
    while level and isinstance(level[0], list):
        sizes = {len(item) if isinstance(item, list) else -1 for item in level}
        if len(sizes) > 1:
            raise _ragged(name)
        shape.append(sizes.pop())
        level = [element for item in level for element in item]
    if any(isinstance(item, list) for item in level):
        raise _ragged(name)
    return level, tuple(shape)


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
    """Numbers stay numpy arrays, which `dumps` writes; strings become text, or base64 objects
    for names ending in `_bytes`."""
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind == "S":
        encode = ((lambda raw: {"b64": base64.b64encode(raw).decode("ascii")})
                  if name.endswith("_bytes") else
                  (lambda raw: raw.decode("utf-8", errors="replace")))
        return np.frompyfunc(encode, 1, 1)(array).tolist() if array.ndim else encode(array.item())
    return array


def from_tf_error(error: tf.errors.OpError) -> RestError:
    """TensorFlow's error as TF Serving reports it: its code, and the line that says why."""
    try:
        code = error_codes_pb2.Code.Name(error.error_code)  # TensorFlow's canonical names.
    except ValueError:
        code = "UNKNOWN"
    return RestError(code if code in HTTP_STATUS else "UNKNOWN", versions.tf_error_reason(error))


def dumps(payload: dict) -> bytes:
    """JSON as TF Serving writes it: float32 in its shortest decimal form (0.1, not
    0.10000000149011612), `NaN` and `Infinity` as tokens."""
    try:
        text = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError:  # Text that is not UTF-8 (an unpaired surrogate), say.
        text = b"null"
    if b"null" not in text:  # orjson writes NaN and Infinity as null; answers hold no null.
        return text
    return json.dumps(payload, allow_nan=True, separators=(",", ":"),
                      default=_plain).encode("utf-8")


def _plain(value: np.ndarray | np.generic) -> Any:
    """A numpy value as the json module writes it, float32 through its shortest decimal form."""
    array = np.asarray(value)
    if array.dtype == np.float32:
        array = array.astype(str).astype(np.float64)
    return array.tolist()
