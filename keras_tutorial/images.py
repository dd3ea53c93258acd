"""Encoded image files -> the 28x28 uint8 pixels the models were trained on, inside the graph.

The exported `serve_images` signature runs this, so a server, `predict` and TFLite's users see
one preparation: no Python in the serving path.
"""

from __future__ import annotations

import tensorflow as tf

from keras_tutorial import data

_HEIGHT, _WIDTH, _ = data.IMAGE_SHAPE


def _decode_one(encoded: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    gray = tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))
    border = tf.concat([tf.reshape(gray[0], [-1]), tf.reshape(gray[-1], [-1]),
                        tf.reshape(gray[:, 0], [-1]), tf.reshape(gray[:, -1], [-1])], 0)
    gray = tf.cond(tf.reduce_mean(border) > 127.5, lambda: 255.0 - gray, lambda: gray)
    size = tf.reduce_max(tf.shape(gray)[:2])
    square = tf.image.resize_with_crop_or_pad(gray, size, size)
    resized = tf.image.resize(square, [_HEIGHT, _WIDTH], method="area")
    return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)


def decode_images(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded image files [N] -> uint8 pixels [N,28,28,1] as the models were trained on them.

    Each image becomes gray, is inverted if its border is bright (dark ink on white paper, the
    opposite of MNIST's white on black), is padded to a square with the background, and is
    resized to 28x28 by averaging areas, as Fashion-MNIST's own images were made. The pixels
    stay in the 0..255 range: the model rescales them itself.
    """
    return tf.map_fn(_decode_one, image_bytes,
                     fn_output_signature=tf.TensorSpec(data.IMAGE_SHAPE, tf.uint8))
