"""Image files, IDX files and dataset splits classified by an exported version.

Image files (PNG, JPEG, GIF or BMP, colour or gray) go through the version's `serve_images`
signature, so they are decoded and resized exactly as a server would do it; IDX files and
dataset splits, already 28x28 pixels, go through `serving_default`.
"""

from __future__ import annotations

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


def classify_image_files(serve_images: tf.types.experimental.ConcreteFunction,
                         files: list[tuple[str, bytes]]) -> np.ndarray:
    """Probabilities [N,10] for encoded image files, decoded inside the exported graph."""
    batches = []
    for start in range(0, len(files), _BATCH_SIZE):
        chunk = files[start:start + _BATCH_SIZE]
        try:
            outputs = serve_images(image_bytes=tf.constant([raw for _, raw in chunk]))
        except tf.errors.InvalidArgumentError:
            raise _undecodable(serve_images, chunk) from None
        batches.append(outputs["probabilities"].numpy())
    return np.concatenate(batches)


def _undecodable(serve_images: tf.types.experimental.ConcreteFunction,
                 chunk: list[tuple[str, bytes]]) -> PredictError:
    """The error naming the first file of a failed batch that the graph cannot decode alone."""
    for name, raw in chunk:
        try:
            serve_images(image_bytes=tf.constant([raw]))
        except tf.errors.InvalidArgumentError as e:
            reason = e.message.strip().splitlines()[-1].strip() if e.message else "invalid"
            return PredictError(f"{name}: cannot decode the image ({reason})")
    return PredictError(f"cannot decode the images {chunk[0][0]} to {chunk[-1][0]}")


def gather_inputs(paths: list[str]) -> list[tuple[str, bytes | np.ndarray]]:
    """Each input file as (name, encoded image) or, for IDX files, (name[i], pixels) per image."""
    inputs = []
    for path in paths:
        raw = read_file(path)
        if raw.startswith(IMAGE_SIGNATURES):
            inputs.append((path, raw))
        elif raw.startswith(_IDX_SIGNATURES):
            inputs.extend((f"{path}[{i}]", image) for i, image in enumerate(idx_images(path)))
        else:
            raise PredictError(f"{path}: not a PNG, JPEG, GIF or BMP image, nor an IDX file "
                               f"(it starts with {raw[:8].hex()})")
    return inputs


def classify(export_dir: str, paths: list[str], version: int | None = None,
             dataset: str | None = None, split: str = "test", data_dir: str | None = None,
            max_examples: int = 0) -> list[dict]:
    """One row (file, class, class_name, probability) per image in `paths` and `dataset`."""
    inputs = gather_inputs(paths)
    saved = versions.open_version(export_dir, version)
    if dataset is not None:
        images, _ = saved.split(split, dataset, data_dir, max_examples)
        inputs.extend((f"{dataset}:{split}[{i}]", image) for i, image in enumerate(images))
    is_file = np.array([isinstance(item, bytes) for _, item in inputs], dtype=bool)
    probabilities = np.zeros((len(inputs), data.NUM_CLASSES), np.float32)
    if is_file.any():
        probabilities[is_file] = classify_image_files(
            saved.signature("serve_images"), [inputs[i] for i in np.flatnonzero(is_file)])
    if not is_file.all():
        pixels = np.stack([inputs[i][1] for i in np.flatnonzero(~is_file)])
        probabilities[~is_file] = saved.classify(pixels)["probabilities"]
    names = saved.class_names
    rows = []
    for (name, _), row in zip(inputs, probabilities):
        best = int(np.argmax(row))
        rows.append({"file": name, "class": best, "class_name": names[best],
                     "probability": float(row[best])})
    return rows


def format_table(rows: list[dict]) -> str:
    """Aligned columns: file, class (its name), probability."""
    width = max([len("file")] + [len(row["file"]) for row in rows])
    name_width = max([len("class")] + [len(row["class_name"]) for row in rows])
    lines = [f"{'file':<{width}}  {'class':<{name_width}}  probability"]
    lines += [f"{row['file']:<{width}}  {row['class_name']:<{name_width}}  "
              f"{row['probability']:.4f}" for row in rows]
    return "\n".join(lines)
