"""SavedModel export in TF Serving's layout: `<export_dir>/<version>/`, each written whole.

Every version has two signatures that return the same outputs, `probabilities` [None,10]
float32, `classes` [None] int64 and `class_names` [None] string:

- `serving_default` takes raw uint8 pixels `images` [None,28,28,1], white on black, 0..255;
- `serve_images` takes `image_bytes` [None] string, encoded PNG, JPEG, GIF or BMP files, colour
  or gray, up to `images.MAX_SIDE` pixels a side and `images.MAX_PIXELS` in all, prepared
  inside the graph (images.py).
"""

from __future__ import annotations

import datetime
import os

import keras
import tensorflow as tf

import keras_tutorial
from keras_tutorial import data, fastpath, files, images, versions, warmup

SERVING_INPUT = "images"
IMAGE_BYTES_INPUT = "image_bytes"
SIGNATURES = ("serving_default", "serve_images")


def serving_functions(model: keras.Model, class_names: tuple[str, ...],
                      ) -> dict[str, tf.types.experimental.PolymorphicFunction]:
    """The two signatures: raw pixels in, or encoded image files in; the same outputs."""
    names = tf.constant(class_names)

    def classify(pixels: tf.Tensor) -> dict[str, tf.Tensor]:
        # Checked in the graph: a server feeding a bad batch gets this error, not a wrong answer.
        pixels = tf.ensure_shape(pixels, (None,) + data.IMAGE_SHAPE)
        probabilities = tf.nn.softmax(tf.cast(model(pixels, training=False), tf.float32))
        classes = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "classes": classes,
                "class_names": tf.gather(names, classes)}

    # Without autograph: the code uses TF's control flow explicitly, and tracing then never
    # re-reads this file, which a run that imported it before an edit would mistrace.
    @tf.function(input_signature=[
        tf.TensorSpec((None,) + data.IMAGE_SHAPE, tf.uint8, name=SERVING_INPUT)],
        autograph=False)
    def serving_default(images):
        return classify(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES_INPUT)],
                 autograph=False)
    def serve_images(image_bytes):
        return classify(images.decode_images(image_bytes))

    return {"serving_default": serving_default, "serve_images": serve_images}


def serving_copy(model: keras.Model) -> keras.Model:
    """The model in stock Keras layers, recurrent ones unrolled, with the same weights.

    Stock layers: the export then depends on nothing of this package. Unrolled: the loop
    converts to TFLite's builtin ops, and its graph runs on any device, where a rolled LSTM
    traced on a GPU would bake cuDNN-only kernels into the SavedModel.
    """
    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        unroll = {"unroll": True} if isinstance(layer, keras.layers.RNN) else {}
        return fastpath.stock_layer(layer, **unroll)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def export_model(model: keras.Model, export_dir: str, metadata: dict | None = None,
                 class_names: tuple[str, ...] | None = None) -> str:
    """Writes the model as the next version under `export_dir` and returns that version's path.

    The version is written to a hidden staging directory beside it and renamed into place,
    so a server watching `export_dir` never sees a half-written version; an existing version
    is never overwritten. `export_info.json` inside records `metadata` and the class names;
    `assets.extra/` holds the warm-up requests TF Serving replays before serving it.
    """
    names = tuple(class_names or data.CLASS_NAMES["mnist"])
    if len(names) != data.NUM_CLASSES:
        raise versions.ExportError(f"expected {data.NUM_CLASSES} class names, got {len(names)}")
    files.make_directory(export_dir)
    with files.staging_directory(export_dir) as staging:
        copy = serving_copy(model)
        archive = keras.export.ExportArchive()
        archive.track(copy)
        for name, function in serving_functions(copy, names).items():
            archive.add_endpoint(name, function)
        archive.write_out(staging, verbose=False)
        warmup.write(staging, warmup.requests(SERVING_INPUT, IMAGE_BYTES_INPUT))
        info = {**(metadata or {}), "class_names": list(names), "signatures": list(SIGNATURES),
                "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "keras_tutorial_version": keras_tutorial.__version__,
                "tensorflow_version": tf.__version__, "keras_version": keras.__version__}
        files.write_json(os.path.join(staging, versions.METADATA_FILE), info, sort_keys=True)
        while True:
            existing = versions.versions(export_dir)
            target = os.path.join(export_dir, str(existing[-1] + 1 if existing else 1))
            try:
                os.rename(staging, target)  # Fails if another run took this number meanwhile.
                return target
            except OSError:
                if not os.path.isdir(target):
                    raise
