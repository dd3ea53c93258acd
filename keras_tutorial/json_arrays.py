"""JSON request bodies read fast: dense numeric arrays go from the text straight to numpy.

A predict request is mostly one big nested array of numbers (32 images are 25,000 of them).
Parsed as usual, each number and each innermost list becomes a Python object, and numpy then
walks them all again. Here each long run of text made only of brackets, commas and numbers is
checked to be one dense array (its brackets and commas are exactly those of some shape), its
numbers are parsed as one flat list by orjson, and it is replaced in the text by a placeholder
that the small remaining document points to. Anything this does not prove (NaN and Infinity,
which orjson refuses and TF Serving accepts, ragged lists, a run inside a string) is parsed
exactly as the `json` module parses it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import orjson

# A run worth lifting: shorter arrays cost less to parse than to check.
_MIN_RUN = 256
_NUMERIC_RUN = re.compile(rb"\[[-+0-9.eE,\[\]\s]{%d,}\]" % _MIN_RUN)
_NOT_STRUCTURE = b"-+0123456789.eE \t\n\r"
_PLACEHOLDER = "\u0000keras-tutorial-array:"
_PLACEHOLDER_IN_JSON = b"\\u0000keras-tutorial-array:"
MAX_RANK = 64  # numpy's limit, and more than any tensor a model takes.


def loads(body: bytes) -> Any:
    """The JSON value of `body`, its dense numeric arrays as int64 or float64 numpy arrays.

    Raises ValueError (json.JSONDecodeError) or RecursionError for text that is not JSON.
    """
    text, arrays = _lift(body)
    if arrays:
        try:
            return _put_back(orjson.loads(text), arrays)
        except orjson.JSONDecodeError:
            pass
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def _lift(body: bytes) -> tuple[bytes, list[np.ndarray]]:
    """`body` with each provably dense numeric array replaced by a placeholder string."""
    if _PLACEHOLDER_IN_JSON in body:
        return body, []
    pieces, arrays, end = [], [], 0
    for match in _NUMERIC_RUN.finditer(body):
        array = dense_array(match.group())
        if array is None:
            continue
        pieces += [body[end:match.start()], b'"\\u0000keras-tutorial-array:%d"' % len(arrays)]
        arrays.append(array)
        end = match.end()
    return b"".join(pieces) + body[end:], arrays


def dense_array(text: bytes) -> np.ndarray | None:
    """The array written by `text` if it is one dense nested JSON array of numbers, else None.

    Its shape comes from counting brackets and commas at each depth; the text's brackets and
    commas must then be exactly those of that shape, so ragged or empty lists are refused.
    """
    skeleton = text.translate(None, _NOT_STRUCTURE)
    shape = _shape(skeleton)
    if shape is None or skeleton != _skeleton(shape):
        return None
    try:
        values = orjson.loads(b"[" + text.translate(None, b"[]") + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(values) != int(np.prod(shape)):
        return None
    array = np.array(values)
    if array.dtype.kind not in "if":
        return None
    return array.reshape(shape)


def _shape(skeleton: bytes) -> tuple[int, ...] | None:
    """The shape a dense array with this skeleton of brackets and commas would have.

    In a dense skeleton of rank r, the first run of k closing brackets ends the first list at
    depth r - k + 1, which holds d equal children of the length found one step before.
    """
    rank = len(skeleton) - len(skeleton.lstrip(b"["))
    if not 0 < rank <= MAX_RANK:
        return None
    sizes, child = [], 0
    for k in range(1, rank + 1):
        end = skeleton.find(b"]" * k)
        if end < 0:
            return None
        length = end + 2 * k - rank  # From its "[" at rank - k to its "]" at end + k - 1.
        size, remainder = divmod(length - 1, child + 1)
        if remainder or size < 1:
            return None
        sizes.append(size)
        child = length
    return tuple(reversed(sizes))


def _skeleton(shape: tuple[int, ...]) -> bytes:
    """The brackets and commas of a dense array of `shape`, numbers left out."""
    inner = b""
    for size in reversed(shape):
        inner = b"[" + b",".join([inner] * size) + b"]"
    return inner


def _put_back(document: Any, arrays: list[np.ndarray]) -> Any:
    """`document` with its placeholders replaced by the arrays they stand for."""
    def restore(value: Any) -> Any:
        if isinstance(value, str) and value.startswith(_PLACEHOLDER):
            return arrays[int(value[len(_PLACEHOLDER):])]
        return value

    stack = [document] if isinstance(document, (dict, list)) else []
    while stack:
        container = stack.pop()
        keys = container.keys() if isinstance(container, dict) else range(len(container))
        for key in keys:
            value = container[key] = restore(container[key])
            if isinstance(value, (dict, list)):
                stack.append(value)
    return restore(document)
