"""Request bodies read fast give exactly what the json module gives, arrays as numpy arrays."""

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from keras_tutorial import json_arrays


def _plain(value):
    """`value` with numpy arrays as the nested lists they were written from."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def test_a_predict_request_becomes_numpy_arrays_with_the_same_values():
    images = np.random.default_rng(0).integers(0, 256, (32, 28, 28, 1))
    forms = [({"instances": images.tolist()}, lambda d: d["instances"]),
             ({"signature_name": "x", "inputs": {"images": images.tolist()}},
              lambda d: d["inputs"]["images"]),
             ({"instances": [{"images": image.tolist()} for image in images]},
              lambda d: d["instances"][-1]["images"]),
             ({"instances": (images / 3).tolist()}, lambda d: d["instances"])]
    for document, array in forms:
        body = json.dumps(document, indent=1).encode()
        parsed = json_arrays.loads(body)
        assert _plain(parsed) == json.loads(body)
        assert isinstance(array(parsed), np.ndarray)


@pytest.mark.parametrize("text", [
    b"[[1,2],[3]]", b"[[1,2],[]]", b"[[1],[]]", b"[[1,2,3],[4],[5]]",
    b"[[[1,2],[3,4,5,6]],[[7,8],[]]]", b"[1 2]", b"[1,,2]", b"[01]", b"[+1]", b"[1,2]]",
    b"[[1,2]", b"[1e999999]", b"[]", b"[[]]"])
def test_what_is_not_one_dense_array_of_json_numbers_is_not_lifted(text):
    assert json_arrays.dense_array(text) is None


def test_what_orjson_refuses_is_parsed_as_the_json_module_parses_it():
    long = ",".join(["1"] * 300)
    for body in (b'{"instances": [NaN, Infinity, -Infinity, %s]}' % long.encode(),
                 b'{"x": "[%s]", "y": [%s]}' % (long.encode(), long.encode()),
                 b'{"s": "\\ud800", "n": [%s]}' % long.encode(),
                 b'{"p": "\\u0000keras-tutorial-array:0", "n": [%s]}' % long.encode()):
        parsed = json_arrays.loads(body)
        expected = json.loads(body)
        assert json.dumps(_plain(parsed)) == json.dumps(expected)


def test_text_that_is_not_json_raises_value_error():
    with pytest.raises(ValueError):
        json_arrays.loads(b'{"instances": [' + b"1," * 300 + b"]")


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.integers(-2**62, 2**62) | st.floats(allow_nan=False, width=32)
                    | st.booleans() | st.text(max_size=5),
                    lambda children: st.lists(children, max_size=6)
                    | st.dictionaries(st.text(max_size=3), children, max_size=3),
                    max_leaves=400))
def test_any_json_document_reads_back_as_the_json_module_reads_it(document):
    body = json.dumps(document).encode()
    assert _plain(json_arrays.loads(body)) == json.loads(body)


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.integers(-2**62, 2**62) | st.floats(allow_nan=False, width=32),
                    lambda children: st.lists(children, max_size=8), max_leaves=300))
def test_nested_numbers_dense_or_ragged_read_back_as_the_json_module_reads_them(numbers):
    body = json.dumps({"instances": numbers}).encode()
    parsed = json_arrays.loads(body)
    assert _plain(parsed) == json.loads(body)  # A lifted array holds 1 as 1.0 beside 2.5.
    if isinstance(parsed["instances"], np.ndarray):
        assert parsed["instances"].shape == np.asarray(numbers).shape
