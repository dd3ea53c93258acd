"""SavedModel export in TF Serving's layout: `<export_dir>/<version>/`, each written whole.

Every version has two signatures that return the same outputs, `probabilities` [None,10]
float32, `classes` [None] int64 and `class_names` [None] string:

- `serving_default` takes raw uint8 pixels `images` [None,28,28,1], white on black, 0..255;
- `serve_images` takes `image_bytes` [None] string, encoded PNG, JPEG, GIF or BMP files, colour
  or gray, up to `images.MAX_SIDE` pixels a side and `images.MAX_PIXELS` in all, prepared
  inside the graph (images.py).

Beside them, `model.keras` holds the same model for Keras (`keras.models.load_model`), in stock
Keras only (`keras_copy`), compiled with the run's optimizer and loss where stock Keras has them.
"""

from __future__ import annotations

import datetime
import os

import keras
import tensorflow as tf

import keras_tutorial
from keras_tutorial import data, fastpath, files, images, models, versions, warmup
from keras_tutorial.config import SGD_MOMENTUM

SERVING_INPUT = "images"
IMAGE_BYTES_INPUT = "image_bytes"
SIGNATURES = ("serving_default", "serve_images")
KERAS_FILE = "model.keras"
MIRROR_LAYERS = (models.AppendMirrors, models.AverageMirrors)


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


def _stock_clone(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A stock Keras layer computing what `layer` computes; a recurrent one unrolled."""
    unroll = {"unroll": True} if isinstance(layer, keras.layers.RNN) else {}
    return fastpath.stock_layer(layer, **unroll)


def serving_copy(model: keras.Model) -> keras.Model:
    """The model in stock Keras layers, recurrent ones unrolled, with the same weights.

    Stock layers: the export then depends on nothing of this package. Unrolled: the loop
    converts to TFLite's builtin ops, and its graph runs on any device, where a rolled LSTM
    traced on a GPU would bake cuDNN-only kernels into the SavedModel.
    """
    copy = keras.models.clone_model(model, clone_function=_stock_clone)
    copy.set_weights(model.get_weights())
    return copy


def keras_copy(model: keras.Model) -> keras.Model:
    """`serving_copy` with nothing of this package, for `model.keras`: the same predictions,
    uncompiled.

    A model that averages over mirrors (`models.AppendMirrors`, `models.AverageMirrors`)
    becomes its one-image network, a nested model called on the images and on their mirrors
    (`keras.ops.flip`), the two logits averaged by `keras.layers.Average`.
    """
    def call_skipping_mirrors(layer, *args, **kwargs):
        return args[0] if isinstance(layer, MIRROR_LAYERS) else layer(*args, **kwargs)

    network = keras.models.clone_model(model, clone_function=_stock_clone,
                                       call_function=call_skipping_mirrors)
    network.set_weights(model.get_weights())
    if not any(isinstance(layer, MIRROR_LAYERS) for layer in model.layers):
        # A new model on the same layers: uncompiled, where a clone keeps the original's compile.
        return keras.Model(network.input, network.output, name=model.name)
    pixels = keras.Input(shape=data.IMAGE_SHAPE, dtype="uint8", name=SERVING_INPUT)
    both = [network(pixels), network(keras.ops.flip(pixels, axis=2))]
    logits = keras.layers.Average(dtype="float32", name="average_mirrors")(both)
    return keras.Model(pixels, logits, name=f"{model.name}_averaged_over_mirrors")


def compile_as_trained(model: keras.Model, run_config: dict) -> bool:
    """Compiles `model` with the run's optimizer, at its starting learning rate, and loss, in
    stock Keras; returns False, leaving it uncompiled, where stock Keras has no such loss
    (mean squared error on softmax probabilities) or the run is not known."""
    optimizer, rate = run_config.get("optimizer"), run_config.get("learning_rate")
    if run_config.get("loss") != "cross_entropy" or optimizer not in ("adam", "sgd") or not rate:
        return False
    model.compile(
        optimizer=(keras.optimizers.Adam(rate) if optimizer == "adam"
                   else keras.optimizers.SGD(rate, momentum=SGD_MOMENTUM)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    # Built now, so that the file holds the optimizer's variables and loads without a warning.
    model.optimizer.build(model.trainable_variables)
    return True


def write_keras_file(model: keras.Model, version_dir: str, run_config: dict) -> dict:
    """Writes `model.keras` into `version_dir`; returns what export_info.json says of it."""
    copy = keras_copy(model)
    compiled = compile_as_trained(copy, run_config)
    copy.save(os.path.join(version_dir, KERAS_FILE))
    return {"file": KERAS_FILE, "compiled": compiled}


def export_model(model: keras.Model, export_dir: str, metadata: dict | None = None,
                 class_names: tuple[str, ...] | None = None) -> str:
    """Writes the model as the next version under `export_dir` and returns that version's path.

    The version is written to a hidden staging directory beside it and renamed into place,
    so a server watching `export_dir` never sees a half-written version; an existing version
    is never overwritten. `export_info.json` inside records `metadata` and the class names;
    `assets.extra/` holds the warm-up requests TF Serving replays before serving it;
    `model.keras` the model for Keras, compiled as `metadata["config"]` says the run trained.
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
        keras_model = write_keras_file(model, staging, (metadata or {}).get("config", {}))
        info = {**(metadata or {}), "class_names": list(names), "signatures": list(SIGNATURES),
                "keras_model": keras_model,
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
