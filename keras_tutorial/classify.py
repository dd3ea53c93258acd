"""Image files, IDX files and dataset splits classified by an exported version.

Image files (PNG, JPEG, GIF or BMP, colour or gray) go through the version's `serve_images`
signature, so they are decoded and resized exactly as a server would do it; IDX files and
dataset splits, already 28x28 pixels, go through `serving_default`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import tensorflow as tf

from keras_tutorial import data, versions
from keras_tutorial.errors import UserError

IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
_IDX_SIGNATURES = (b"\x00\x00\x08", b"\x1f\x8b")  # Raw IDX of unsigned bytes, or gzipped.
_BATCH_SIZE = 256


class PredictError(UserError):
    """An input that cannot be classified; the message is one line meant for the user."""


def read_file(path: str) -> bytes:
    """The bytes of an input file, which must exist and not be empty."""
    raw = data.read_bytes(path, "an image or IDX file")
    if not raw:
        raise PredictError(f"{path}: is empty, expected an image or IDX file")
    return raw


def idx_images(path: str) -> np.ndarray:
    """The images [N,28,28,1] of an IDX image file such as t10k-images-idx3-ubyte."""
    array = data.read_idx(path)
    if array.ndim != 3 or array.shape[1:] != data.IMAGE_SHAPE[:2]:
        raise PredictError(f"{path}: IDX file of shape {list(array.shape)} does not hold "
                           "images [N,28,28]")
    return array[..., np.newaxis]


# An input: its name, and its encoded image file, its pixels [28,28,1], or why it has neither.
Input = tuple[str, bytes | np.ndarray | PredictError]


class Classified(NamedTuple):
    """What `classify` found: a row per image classified, and a line per input that was not."""

    rows: list[dict]
    errors: list[str]


def classify_image_files(serve_images: tf.types.experimental.ConcreteFunction,
                         files: list[tuple[str, bytes]]) -> list[np.ndarray | PredictError]:
    """Probabilities [10] of each encoded image file, decoded inside the exported graph, or
    the error saying why the graph cannot decode it."""
    outcomes = []
    for start in range(0, len(files), _BATCH_SIZE):
        chunk = files[start:start + _BATCH_SIZE]
        try:
            outcomes.extend(_probabilities(serve_images, [raw for _, raw in chunk]))
        except tf.errors.InvalidArgumentError:  # Some file of the batch: find which, alone.
            outcomes.extend(_classify_alone(serve_images, name, raw) for name, raw in chunk)
    return outcomes


def _probabilities(serve_images: tf.types.experimental.ConcreteFunction,
                   raws: list[bytes]) -> np.ndarray:
    return serve_images(image_bytes=tf.constant(raws))["probabilities"].numpy()


def _classify_alone(serve_images: tf.types.experimental.ConcreteFunction, name: str,
                    raw: bytes) -> np.ndarray | PredictError:
    try:
        return _probabilities(serve_images, [raw])[0]
    except tf.errors.InvalidArgumentError as e:
        return PredictError(f"{name}: {versions.tf_error_reason(e)}")


def gather_inputs(paths: list[str]) -> list[Input]:
    """Each input file as (name, encoded image) or, for IDX files, (name[i], pixels) per image;
    a file that is neither, or cannot be read, as (name, the error saying why)."""
    inputs = []
    for path in paths:
        try:
            inputs.extend(_read_input(path))
        except UserError as e:
            inputs.append((path, PredictError(str(e))))
    return inputs


def _read_input(path: str) -> list[Input]:
    """A file as one encoded image, or as the images of an IDX file; else an error."""
    raw = read_file(path)
    if raw.startswith(IMAGE_SIGNATURES):
        return [(path, raw)]
    if raw.startswith(_IDX_SIGNATURES):
        return [(f"{path}[{i}]", image) for i, image in enumerate(idx_images(path))]
    raise PredictError(f"{path}: not a PNG, JPEG, GIF or BMP image, nor an IDX file "
                       f"(it starts with {raw[:8].hex()})")


def classify(export_dir: str, paths: list[str], version: int | None = None,
             dataset: str | None = None, split: str = "test", data_dir: str | None = None,
             max_examples: int = 0) -> Classified:
    """One row (file, class, class_name, probability) per image in `paths` and `dataset`, and
    one error per input file that cannot be classified, each in the order given."""
    inputs = gather_inputs(paths)
    saved = versions.open_version(export_dir, version)
    if dataset is not None:
        images, _ = saved.split(split, dataset, data_dir, max_examples)
        inputs.extend((f"{dataset}:{split}[{i}]", image) for i, image in enumerate(images))
    return _tabulate([name for name, _ in inputs], _outcomes(saved, inputs), saved.class_names)


def _outcomes(saved: versions.Version, inputs: list[Input]) -> list[np.ndarray | PredictError]:
    """The probabilities [10] of each input (encoded files through `serve_images`, pixels
    through `serving_default`), or its error."""
    outcomes = [item for _, item in inputs]
    files = [i for i, item in enumerate(outcomes) if isinstance(item, bytes)]
    pixels = [i for i, item in enumerate(outcomes) if isinstance(item, np.ndarray)]
    if files:
        decoded = classify_image_files(saved.signature("serve_images"),
                                       [inputs[i] for i in files])
        for i, outcome in zip(files, decoded):
            outcomes[i] = outcome
    if pixels:
        probabilities = saved.classify(np.stack([outcomes[i] for i in pixels]))["probabilities"]
        for i, row in zip(pixels, probabilities):
            outcomes[i] = row
    return outcomes


def _tabulate(names: list[str], outcomes: list[np.ndarray | PredictError],
              class_names: tuple[str, ...]) -> Classified:
    """Rows for the inputs classified, each named by its most likely class, and the errors."""
    rows, errors = [], []
    for name, outcome in zip(names, outcomes):
        if isinstance(outcome, PredictError):
            errors.append(str(outcome))
            continue
        best = int(np.argmax(outcome))
        rows.append({"file": name, "class": best, "class_name": class_names[best],
                     "probability": float(outcome[best])})
    return Classified(rows, errors)


def format_table(rows: list[dict]) -> str:
    """Aligned columns: file, class (its name), probability."""
    width = max([len("file")] + [len(row["file"]) for row in rows])
    name_width = max([len("class")] + [len(row["class_name"]) for row in rows])
    lines = [f"{'file':<{width}}  {'class':<{name_width}}  probability"]
    lines += [f"{row['file']:<{width}}  {row['class_name']:<{name_width}}  "
              f"{row['probability']:.4f}" for row in rows]
    return "\n".join(lines)
