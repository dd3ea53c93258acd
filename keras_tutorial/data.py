"""Datasets as `tf.data` pipelines, from TFDS, local IDX / npz files or synthetic data.

Every source is first read into the same in-memory arrays (uint8 images [N,28,28,1] and
int32 labels [N]); one pipeline function then serves them all. MNIST-sized data is 55 MB,
so holding it in memory is both the simplest and the fastest choice. One module of ~360 lines
on purpose: sources and pipelines meet in `Arrays`, and half of it is the IDX file checks that
turn every corrupt file into one line.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import socket
import threading
import urllib.parse
import zipfile
import zlib

import numpy as np
import tensorflow as tf

from keras_tutorial.config import AUGMENTATIONS, DATASETS, TFDS_DATASETS  # noqa: F401
from keras_tutorial.errors import UserError

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10

CLASS_NAMES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "synthetic": tuple(str(digit) for digit in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}

# The standard file names of MNIST, Fashion-MNIST and KMNIST, each optionally gzipped.
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
NPZ_FILE = "mnist.npz"  # The name under which `keras.datasets.mnist` caches MNIST.

SYNTHETIC_SIZES = (60_000, 10_000)
_IDX_UBYTE = 0x08
_NETWORK_TIMEOUT_S = 3.0


class DataError(UserError):
    """Data that cannot be used; the message is one line meant for the user."""


def prefetched(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """`dataset` prefetched, without tf.data's autotuning thread, so its iterators free at once.

    Freeing an iterator waits for that thread, up to seconds after some epochs
    (benchmarks/README.md). These
    pipelines have nothing for it to tune; `prefetch(AUTOTUNE)` still sizes its own buffer.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


@dataclasses.dataclass(frozen=True)
class Arrays:
    """A dataset held in memory: uint8 images [N,28,28,1] and int32 labels [N]."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


@dataclasses.dataclass(frozen=True)
class Pipelines:
    """Batched train / validation / test pipelines and the example counts behind them.

    `train` reshuffles itself every time it is iterated, for Keras `fit`; `epoch()` gives one
    epoch whose order depends only on (seed, epoch), for a loop that must resume exactly.
    """

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset
    num_train: int
    num_validation: int
    num_test: int
    train_images: tf.Tensor
    train_labels: tf.Tensor
    augment: str = "none"

    def shard_order(self, seed: int, epoch: int, num_shards: int = 1,
                    shard_index: int = 0) -> tf.Tensor:
        """The training indices one shard reads in one epoch: the whole split permuted by
        (seed, epoch), cut into `num_shards` equal, disjoint shards (one per worker)."""
        order = tf.random.experimental.stateless_shuffle(
            tf.range(self.num_train, dtype=tf.int64), seed=[seed, epoch])
        return order[shard_index::num_shards][:self.num_train // num_shards]

    def epoch(self, batch_size: int, seed: int, epoch: int, num_shards: int = 1,
              shard_index: int = 0, skip_batches: int = 0) -> tf.data.Dataset:
        """One epoch of a shard in full batches, resumable after `skip_batches`.

        Batches are gathered from the in-memory split in one vectorised op each, so the
        pipeline does no per-example work.
        """
        shard = self.shard_order(seed, epoch, num_shards, shard_index)
        num_batches = len(shard) // batch_size
        batches = tf.reshape(shard[:num_batches * batch_size], [num_batches, batch_size])
        epoch_seed = tf.random.experimental.stateless_fold_in([seed, epoch], shard_index)

        def gather(batch_index: tf.Tensor, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            images = tf.gather(self.train_images, indices)
            if self.augment == "flip":
                images = tf.image.stateless_random_flip_left_right(
                    images, tf.random.experimental.stateless_fold_in(epoch_seed, batch_index))
            return images, tf.gather(self.train_labels, indices)

        return prefetched(tf.data.Dataset.from_tensor_slices(
            (tf.range(skip_batches, num_batches), batches[skip_batches:])).map(gather))


def read_bytes(path: str, expected: str) -> bytes:
    """A file's bytes, or one line saying why they cannot be read; `expected` names the kind."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected {expected}") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file of unsigned bytes (optionally gzipped), checking every header field."""
    raw = read_bytes(path, "an IDX file")
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    type_code, ndim = raw[2], raw[3]
    if type_code != _IDX_UBYTE:
        raise DataError(f"{path}: IDX element type 0x{type_code:02x} is not supported, "
                        "expected 0x08 (unsigned byte)")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} of {header_size} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=object))
    found = len(raw) - header_size
    if found != expected:
        problem = "truncated" if found < expected else "has trailing bytes"
        raise DataError(f"{path}: {problem}: header shape {shape} needs {expected} bytes "
                        f"of data, found {found}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def _idx_path(directory: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.lexists(path):
            return path
    return None


def has_local_files(directory: str) -> bool:
    """Whether `directory` holds a dataset of its own (IDX files or mnist.npz), not a TFDS store."""
    return (os.path.isfile(os.path.join(directory, NPZ_FILE))
            or any(_idx_path(directory, stem) for stem in IDX_FILES.values()))


def _checked(images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str,
             ) -> tuple[np.ndarray, np.ndarray]:
    """Validates one split's shapes, counts and label range; returns [N,28,28,1] uint8, int32."""
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE[:2] or images.shape[0] == 0:
        raise DataError(f"{images_name}: expected images of shape [N,28,28] with N > 0, "
                        f"found {list(images.shape)}")
    if images.dtype != np.uint8:
        raise DataError(f"{images_name}: expected uint8 pixels, found {images.dtype}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{labels_name}: expected {len(images)} labels to match {images_name}, "
                        f"found shape {list(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 \
            or labels.max() >= NUM_CLASSES:
        raise DataError(f"{labels_name}: labels must be integers in [0, {NUM_CLASSES}), "
                        f"found {labels.dtype} in [{labels.min()}, {labels.max()}]")
    return images[..., np.newaxis], labels.astype(np.int32)


def load_idx_dir(directory: str) -> Arrays:
    """Reads the four standard IDX files (MNIST layout) from `directory`."""
    paths = {}
    for key, stem in IDX_FILES.items():
        paths[key] = _idx_path(directory, stem)
        if paths[key] is None:
            raise DataError(f"{directory}: missing {stem}[.gz] (the directory must hold all of "
                            f"{', '.join(IDX_FILES.values())})")
    raw = {key: read_idx(path) for key, path in paths.items()}
    x_train, y_train = _checked(raw["x_train"], raw["y_train"], paths["x_train"], paths["y_train"])
    x_test, y_test = _checked(raw["x_test"], raw["y_test"], paths["x_test"], paths["y_test"])
    return Arrays(x_train, y_train, x_test, y_test, source=f"IDX files in {directory}")


def load_npz(path: str) -> Arrays:
    """Reads a Keras-style `mnist.npz` (x_train, y_train, x_test, y_test)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in IDX_FILES if key not in npz.files]
            if missing:
                raise DataError(f"{path}: missing array '{missing[0]}' "
                                f"(expected {', '.join(IDX_FILES)})")
            raw = {key: npz[key] for key in IDX_FILES}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz file ({e})") from None
    x_train, y_train = _checked(raw["x_train"], raw["y_train"], f"{path}:x_train", f"{path}:y_train")
    x_test, y_test = _checked(raw["x_test"], raw["y_test"], f"{path}:x_test", f"{path}:y_test")
    return Arrays(x_train, y_train, x_test, y_test, source=path)


def synthetic_arrays(num_train: int, num_test: int, seed: int) -> Arrays:
    """Learnable random data: each class is a fixed random pattern plus heavy pixel noise."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(0, 255, size=(NUM_CLASSES,) + IMAGE_SHAPE)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, NUM_CLASSES, size=n).astype(np.int32)
        noise = rng.normal(0, 80, size=(n,) + IMAGE_SHAPE)
        return np.clip(patterns[labels] + noise, 0, 255).astype(np.uint8), labels

    x_train, y_train = sample(num_train)
    x_test, y_test = sample(num_test)
    return Arrays(x_train, y_train, x_test, y_test, source=f"synthetic (seed {seed})")


def _reachable(url: str, timeout: float = _NETWORK_TIMEOUT_S) -> bool:
    """Whether a TCP connection to `url`'s host opens within `timeout` (DNS included)."""
    parsed = urllib.parse.urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result = []

    def connect() -> None:
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout + 1)
    return bool(result)


def load_tfds(name: str, data_dir: str | None) -> Arrays:
    """Loads a TFDS dataset, downloading it only when its source is reachable."""
    import tensorflow_datasets as tfds  # Imported here: it is slow and only this source needs it.

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        url = getattr(builder, "URL", "https://storage.googleapis.com")
        if not _reachable(url):
            raise DataError(
                f"dataset '{name}' is not in {builder.data_dir} and {url} is unreachable: "
                "use --data_dir=DIR with its IDX files (for Fashion-MNIST: apt-get install "
                "dataset-fashion-mnist, then --data_dir=/usr/share/datasets/fashion-mnist) "
                "or --dataset=synthetic")
        builder.download_and_prepare()
    splits = {}
    for split in ("train", "test"):
        batches = list(tfds.as_numpy(
            builder.as_dataset(split=split, as_supervised=True).batch(10_000)))
        images = np.concatenate([images for images, _ in batches])
        labels = np.concatenate([labels for _, labels in batches])
        splits[split] = _checked(images, labels, f"{name}[{split}] images", f"{name}[{split}] labels")
    return Arrays(*splits["train"], *splits["test"], source=f"TFDS {name} in {builder.data_dir}")


def load_arrays(dataset: str, data_dir: str | None = None, max_examples: int = 0,
                seed: int = 0) -> Arrays:
    """Finds and reads a dataset: local files in `data_dir` first, else TFDS (or synthetic).

    `max_examples` > 0 keeps only that many training and test examples, for quick runs.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}', expected one of {', '.join(DATASETS)}")
    if dataset == "synthetic":
        sizes = [min(n, max_examples) if max_examples > 0 else n for n in SYNTHETIC_SIZES]
        return synthetic_arrays(*sizes, seed=seed)
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DataError(f"data directory {data_dir} does not exist or is not a directory")
    if data_dir is not None and has_local_files(data_dir):
        npz = os.path.join(data_dir, NPZ_FILE)
        arrays = load_npz(npz) if _idx_path(data_dir, IDX_FILES["x_train"]) is None \
            else load_idx_dir(data_dir)
    else:
        arrays = load_tfds(dataset, data_dir)
    if max_examples > 0:
        arrays = dataclasses.replace(
            arrays, x_train=arrays.x_train[:max_examples], y_train=arrays.y_train[:max_examples],
            x_test=arrays.x_test[:max_examples], y_test=arrays.y_test[:max_examples])
    return arrays


def load_first_available(candidates: list[tuple[str, str | None]], max_examples: int = 0,
                         seed: int = 0) -> tuple[str, Arrays]:
    """Loads the first (dataset, data_dir) that works, for notebooks that must run anywhere.

    Returns the dataset's name with its arrays; the reason each earlier candidate failed is
    printed. The last candidate's error, if it fails too, is raised.
    """
    for dataset, data_dir in candidates[:-1]:
        try:
            return dataset, load_arrays(dataset, data_dir, max_examples, seed)
        except DataError as e:
            print(f"({dataset} not available: {e})")
    dataset, data_dir = candidates[-1]
    return dataset, load_arrays(dataset, data_dir, max_examples, seed)


def make_pipelines(arrays: Arrays, batch_size: int, seed: int,
                   validation_size: int = 5000, augment: str = "none") -> Pipelines:
    """Builds the three pipelines; validation is the first `validation_size` training examples.

    Training data follows the TFDS guide's order: cache, shuffle over the whole split (seeded,
    reshuffled every epoch), batch, prefetch. The split is converted to a tensor once, which
    both training pipelines read. Evaluation keeps its last partial batch.
    `augment="flip"` mirrors a random half of each training batch left to right, which keeps
    a garment's (not a digit's) label.
    """
    if augment not in AUGMENTATIONS:
        raise DataError(f"unknown augmentation '{augment}', expected one of "
                        f"{', '.join(AUGMENTATIONS)}")
    num_train_total = len(arrays.x_train)
    if not 0 <= validation_size < num_train_total:
        raise DataError(f"validation size {validation_size} must be in [0, {num_train_total}) "
                        f"for {num_train_total} training examples")
    x_val, y_val = arrays.x_train[:validation_size], arrays.y_train[:validation_size]
    x_train, y_train = arrays.x_train[validation_size:], arrays.y_train[validation_size:]

    train_images, train_labels = tf.constant(x_train), tf.constant(y_train)
    train = (tf.data.Dataset.from_tensor_slices((train_images, train_labels))
             .cache()
             .shuffle(len(x_train), seed=seed, reshuffle_each_iteration=True)
             .batch(batch_size))
    if augment == "flip":
        train = train.map(lambda images, labels: (
            tf.image.random_flip_left_right(images, seed=seed), labels))
    train = prefetched(train)

    def evaluation(x: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
        return prefetched(tf.data.Dataset.from_tensor_slices(
            (tf.constant(x), tf.constant(y))).batch(batch_size))

    return Pipelines(
        train=train,
        validation=evaluation(x_val, y_val) if validation_size else None,
        test=evaluation(arrays.x_test, arrays.y_test),
        num_train=len(x_train), num_validation=validation_size, num_test=len(arrays.x_test),
        train_images=train_images, train_labels=train_labels, augment=augment)
