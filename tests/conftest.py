"""Small datasets that the tests write themselves: nothing is downloaded."""

import gzip
import os

import keras
import numpy as np
import pytest

from keras_tutorial import data, export, models


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


@pytest.fixture(scope="session")
def bordered_arrays(small_arrays) -> data.Arrays:
    """`small_arrays` inside MNIST's 4-pixel black margin. The synthetic patterns reach the edge,
    where `serve_images` would take them for the bright paper of a dark-on-light photo."""
    def framed(images: np.ndarray) -> np.ndarray:
        images = images.copy()
        images[:, :4], images[:, -4:], images[:, :, :4], images[:, :, -4:] = 0, 0, 0, 0
        return images

    return data.Arrays(framed(small_arrays.x_train), small_arrays.y_train,
                       framed(small_arrays.x_test), small_arrays.y_test, source="bordered")


@pytest.fixture(scope="session")
def bordered_idx_dir(tmp_path_factory, bordered_arrays) -> str:
    return write_idx_dir(tmp_path_factory.mktemp("bordered_idx"), bordered_arrays)


@pytest.fixture(scope="session")
def trained_mlp(bordered_arrays):
    """An MLP fitted to `bordered_arrays` in seconds: confident and mostly right on its test set."""
    keras.utils.set_random_seed(0)
    model = models.build("mlp")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(bordered_arrays.x_train, bordered_arrays.y_train, epochs=8, batch_size=32,
              verbose=0)
    return model


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory, trained_mlp, bordered_idx_dir) -> str:
    """Version 1 of `trained_mlp`, recorded as trained on Fashion-MNIST read from
    `bordered_idx_dir`. Shared: a test that writes into it must work on a copy."""
    directory = str(tmp_path_factory.mktemp("export"))
    export.export_model(
        trained_mlp, directory, class_names=data.CLASS_NAMES["fashion_mnist"],
        metadata={"model": "mlp", "dataset": "fashion_mnist",
                  "config": {"data_dir": bordered_idx_dir, "seed": 1}})
    return directory
