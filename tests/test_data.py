import gzip
import os
import socket
import time

from hypothesis import given, settings, strategies as st
import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_tutorial import data
from conftest import idx_bytes, write_idx_dir


def _assert_one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("gzipped", [False, True])
def test_idx_directory_round_trip(tmp_path, small_arrays, gzipped):
    arrays = data.load_idx_dir(write_idx_dir(tmp_path, small_arrays, gzipped))
    assert arrays.x_train.shape == (600, 28, 28, 1) and arrays.x_train.dtype == np.uint8
    assert arrays.y_train.shape == (600,) and arrays.y_train.dtype == np.int32
    np.testing.assert_array_equal(arrays.x_test, small_arrays.x_test)
    np.testing.assert_array_equal(arrays.y_test, small_arrays.y_test)


def test_npz_round_trip(tmp_path, small_arrays):
    np.savez(tmp_path / data.NPZ_FILE, x_train=small_arrays.x_train[..., 0],
             y_train=small_arrays.y_train, x_test=small_arrays.x_test[..., 0],
             y_test=small_arrays.y_test)
    arrays = data.load_arrays("mnist", data_dir=str(tmp_path))
    np.testing.assert_array_equal(arrays.x_train, small_arrays.x_train)
    assert arrays.source.endswith(data.NPZ_FILE)


def _corrupt(path, transform):
    with open(path, "rb") as f:
        raw = f.read()
    with open(path, "wb") as f:
        f.write(transform(raw))


TRAIN_IMAGES = data.IDX_FILES["x_train"]
TRAIN_LABELS = data.IDX_FILES["y_train"]


@pytest.mark.parametrize("name, transform, expected", [
    ("truncated body", lambda raw: raw[:-100], "truncated"),
    ("truncated header", lambda raw: raw[:10], "truncated IDX header"),
    ("trailing bytes", lambda raw: raw + b"\0" * 7, "trailing bytes"),
    ("bad magic", lambda raw: b"\x08\x03" + raw[2:], "not an IDX file"),
    ("empty file", lambda raw: b"", "not an IDX file"),
    ("int32 elements", lambda raw: raw[:2] + b"\x0c" + raw[3:], "element type 0x0c"),
    ("corrupt gzip", lambda raw: gzip.compress(raw)[:-30], "gzip"),
    ("wrong image size", lambda raw: idx_bytes(np.zeros((600, 27, 28), np.uint8)), "[N,28,28]"),
])
def test_bad_image_file_is_one_line_error_naming_it(idx_dir, name, transform, expected):
    _corrupt(os.path.join(idx_dir, TRAIN_IMAGES), transform)
    with pytest.raises(data.DataError) as excinfo:
        data.load_arrays("fashion_mnist", data_dir=idx_dir)
    _assert_one_line_error(excinfo, TRAIN_IMAGES, expected)


@pytest.mark.parametrize("labels, expected", [
    (np.zeros(599, np.uint8), "expected 600 labels"),
    (np.full(600, 10, np.uint8), "labels must be integers in [0, 10)"),
    (np.zeros((600, 2), np.uint8), "expected 600 labels"),
])
def test_mismatched_labels_are_one_line_error(idx_dir, labels, expected):
    _corrupt(os.path.join(idx_dir, TRAIN_LABELS), lambda raw: idx_bytes(labels))
    with pytest.raises(data.DataError) as excinfo:
        data.load_idx_dir(idx_dir)
    _assert_one_line_error(excinfo, TRAIN_LABELS, expected)


def test_missing_file_and_directory_in_its_place(idx_dir):
    os.remove(os.path.join(idx_dir, data.IDX_FILES["y_test"]))
    with pytest.raises(data.DataError) as excinfo:
        data.load_arrays("mnist", data_dir=idx_dir)
    _assert_one_line_error(excinfo, "missing t10k-labels-idx1-ubyte")
    os.mkdir(os.path.join(idx_dir, data.IDX_FILES["y_test"]))
    with pytest.raises(data.DataError) as excinfo:
        data.load_arrays("mnist", data_dir=idx_dir)
    _assert_one_line_error(excinfo, "is a directory")


def test_bad_npz_is_one_line_error(tmp_path):
    (tmp_path / data.NPZ_FILE).write_bytes(b"not a zip file")
    with pytest.raises(data.DataError) as excinfo:
        data.load_arrays("mnist", data_dir=str(tmp_path))
    _assert_one_line_error(excinfo, data.NPZ_FILE, "not a readable .npz")
    np.savez(tmp_path / data.NPZ_FILE, x_train=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(data.DataError) as excinfo:
        data.load_arrays("mnist", data_dir=str(tmp_path))
    _assert_one_line_error(excinfo, "missing array 'y_train'")


def test_missing_data_dir_and_unknown_dataset(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_arrays("mnist", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(data.DataError, match="unknown dataset 'cifar10'"):
        data.load_arrays("cifar10")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_idx_reader_fuzzed_with_random_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("fuzz") / "file-idx3-ubyte"
    path.write_bytes(raw)
    try:
        array = data.read_idx(str(path))
    except data.DataError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    else:
        assert array.dtype == np.uint8 and array.size == len(raw) - 4 - 4 * array.ndim


_VALID = idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(_VALID) - 1), st.integers(0, 255)), max_size=4),
       st.integers(0, len(_VALID)), st.booleans())
def test_idx_reader_fuzzed_with_mutated_files(tmp_path_factory, edits, cut, gzipped):
    raw = bytearray(_VALID)
    for position, value in edits:
        raw[position] = value
    raw = bytes(raw[:cut])
    path = tmp_path_factory.mktemp("fuzz") / "file-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(raw) if gzipped else raw)
    try:
        array = data.read_idx(str(path))
    except data.DataError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    else:
        assert array.tobytes() == raw[4 + 4 * array.ndim:]


def test_synthetic_is_seeded_and_learnable_shaped():
    a = data.load_arrays("synthetic", max_examples=100, seed=3)
    b = data.load_arrays("synthetic", max_examples=100, seed=3)
    assert a.x_train.shape == (100, 28, 28, 1) and a.x_test.shape == (100, 28, 28, 1)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert set(np.unique(a.y_train)) == set(range(10))


def test_tfds_source_with_mocked_tfds(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_reachable", lambda url: True)
    with tfds.testing.mock_data(num_examples=40):
        arrays = data.load_arrays("mnist", data_dir=str(tmp_path), max_examples=30)
    assert arrays.x_train.shape == (30, 28, 28, 1) and arrays.x_train.dtype == np.uint8
    assert arrays.y_test.shape == (30,) and arrays.source.startswith("TFDS mnist")


def test_tfds_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_reachable", lambda url: False)
    started = time.monotonic()
    with pytest.raises(data.DataError) as excinfo:
        data.load_arrays("kmnist", data_dir=str(tmp_path))
    assert time.monotonic() - started < 15
    _assert_one_line_error(excinfo, "'kmnist' is not in", "--data_dir", "--dataset=synthetic")


def test_reachability_check_answers_quickly():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert data._reachable(f"http://127.0.0.1:{port}/")
    started = time.monotonic()
    assert not data._reachable(f"http://127.0.0.1:{port}/")  # Closed now.
    assert time.monotonic() - started < 5


def _labels(dataset):
    return np.concatenate([labels.numpy() for _, labels in dataset])


def test_pipelines_split_shuffle_and_keep_last_batch(small_arrays):
    pipelines = data.make_pipelines(small_arrays, batch_size=64, seed=7, validation_size=100)
    assert (pipelines.num_train, pipelines.num_validation, pipelines.num_test) == (500, 100, 200)
    epoch_1, epoch_2 = _labels(pipelines.train), _labels(pipelines.train)
    images, labels = next(iter(pipelines.train))
    assert images.dtype == np.uint8 and images.shape == (64, 28, 28, 1)
    assert labels.shape == (64,)
    np.testing.assert_array_equal(_labels(pipelines.validation), small_arrays.y_train[:100])
    np.testing.assert_array_equal(_labels(pipelines.test), small_arrays.y_test)  # 200 = 3*64 + 8.
    assert len(epoch_1) == 500 and not np.array_equal(epoch_1, epoch_2)
    np.testing.assert_array_equal(np.sort(epoch_1), np.sort(small_arrays.y_train[100:]))
    again = data.make_pipelines(small_arrays, batch_size=64, seed=7, validation_size=100)
    np.testing.assert_array_equal(_labels(again.train), epoch_1)


def test_validation_larger_than_train_is_an_error(small_arrays):
    with pytest.raises(data.DataError, match="validation size 600"):
        data.make_pipelines(small_arrays, batch_size=32, seed=0, validation_size=600)


def test_epochs_depend_only_on_seed_and_epoch_and_resume_exactly(small_arrays):
    pipelines = data.make_pipelines(small_arrays, batch_size=50, seed=0, validation_size=100)
    first = _labels(pipelines.epoch(50, seed=3, epoch=0))
    assert len(first) == 500
    np.testing.assert_array_equal(_labels(pipelines.epoch(50, seed=3, epoch=0)), first)
    assert not np.array_equal(_labels(pipelines.epoch(50, seed=3, epoch=1)), first)
    np.testing.assert_array_equal(
        _labels(pipelines.epoch(50, seed=3, epoch=0, skip_batches=4)), first[200:])


def test_pipelines_run_without_the_autotuning_thread(small_arrays):
    # Freeing an iterator waits for that thread, up to 10 s after an epoch here.
    pipelines = data.make_pipelines(small_arrays, batch_size=50, seed=0, validation_size=100)
    for dataset in (pipelines.train, pipelines.validation, pipelines.test,
                    pipelines.epoch(50, seed=0, epoch=0)):
        assert dataset.options().autotune.enabled is False


def test_worker_shards_are_disjoint_and_equal(small_arrays):
    pipelines = data.make_pipelines(small_arrays, batch_size=32, seed=0, validation_size=100)

    def pixels(shard_index):
        return {images.tobytes() for batch, _ in pipelines.epoch(
            25, seed=1, epoch=2, num_shards=2, shard_index=shard_index) for images in batch.numpy()}

    shard_0, shard_1 = pixels(0), pixels(1)
    assert len(shard_0) == len(shard_1) == 250  # 500 examples, 2 workers, 10 batches of 25 each.
    assert not shard_0 & shard_1


def test_first_available_source_falls_through_to_the_next(tmp_path, idx_dir, capsys):
    name, arrays = data.load_first_available(
        [("mnist", str(tmp_path / "missing")), ("fashion_mnist", idx_dir), ("synthetic", None)])
    assert name == "fashion_mnist" and arrays.source == f"IDX files in {idx_dir}"
    assert "(mnist not available: data directory" in capsys.readouterr().out
    with pytest.raises(data.DataError, match="does not exist"):
        data.load_first_available([("kmnist", str(tmp_path / "missing"))])


def test_flip_mirrors_about_half_of_each_epoch_reproducibly(small_arrays):
    plain = data.make_pipelines(small_arrays, batch_size=50, seed=0, validation_size=100)
    flipped = data.make_pipelines(small_arrays, batch_size=50, seed=0, validation_size=100,
                                  augment="flip")

    def epoch(pipelines, skip=0):
        batches = list(pipelines.epoch(50, seed=3, epoch=1, skip_batches=skip))
        return (np.concatenate([images.numpy() for images, _ in batches]),
                np.concatenate([labels.numpy() for _, labels in batches]))

    (original, labels), (augmented, augmented_labels) = epoch(plain), epoch(flipped)
    np.testing.assert_array_equal(augmented_labels, labels)
    mirrored = np.all(augmented == original[:, :, ::-1], axis=(1, 2, 3))
    unchanged = np.all(augmented == original, axis=(1, 2, 3))
    assert np.all(mirrored | unchanged)
    assert 0.35 < mirrored.mean() < 0.65
    np.testing.assert_array_equal(epoch(flipped)[0], augmented)
    np.testing.assert_array_equal(epoch(flipped, skip=4)[0], augmented[200:])


def test_unknown_augmentation_is_an_error(small_arrays):
    with pytest.raises(data.DataError, match="unknown augmentation 'rotate', expected one of"):
        data.make_pipelines(small_arrays, batch_size=32, seed=0, augment="rotate")
