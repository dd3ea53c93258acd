"""Small datasets that the tests write themselves: nothing is downloaded."""

import gzip
import os

import numpy as np
import pytest

from keras_tutorial import data


def idx_bytes(array: np.ndarray) -> bytes:
    """Encodes a uint8 array in the IDX format (magic 0x0000 08 <ndim>, big-endian dims)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dir(directory, arrays: data.Arrays, gzipped: bool = False) -> str:
    """Writes `arrays` as the four standard IDX files and returns the directory."""
    os.makedirs(directory, exist_ok=True)
    for key, stem in data.IDX_FILES.items():
        array = getattr(arrays, key)
        if key.startswith("x"):
            array = array[..., 0]
        payload = idx_bytes(array)
        path = os.path.join(directory, stem + (".gz" if gzipped else ""))
        with open(path, "wb") as f:
            f.write(gzip.compress(payload) if gzipped else payload)
    return str(directory)


@pytest.fixture(scope="session")
def small_arrays() -> data.Arrays:
    """600 training and 200 test examples of learnable synthetic data."""
    return data.synthetic_arrays(600, 200, seed=1)


@pytest.fixture
def idx_dir(tmp_path, small_arrays) -> str:
    return write_idx_dir(tmp_path / "idx", small_arrays)
