"""Image files become the pixels the models were trained on, inside the graph."""

import numpy as np
import tensorflow as tf

from keras_tutorial import images as image_files


def test_photos_of_any_size_colour_and_polarity_become_mnist_pixels(bordered_arrays):
    images = bordered_arrays.x_test[:4]

    def decoded(pictures, encode=tf.io.encode_png):
        return image_files.decode_images(tf.constant([encode(p).numpy() for p in pictures])).numpy()

    np.testing.assert_array_equal(decoded(images), images)
    # Dark ink on white paper, in colour, three times the size.
    photos = np.repeat(np.repeat(255 - images, 3, axis=1), 3, axis=2)
    np.testing.assert_array_equal(decoded(np.concatenate([photos] * 3, axis=-1)), images)
    jpeg = decoded(np.concatenate([photos] * 3, axis=-1), tf.io.encode_jpeg).astype(float)
    assert np.abs(jpeg - images).mean() < 3
    # Half the size: each pixel becomes a 2x2 block.
    small = images[:, ::2, ::2]
    np.testing.assert_array_equal(decoded(small), np.repeat(np.repeat(small, 2, 1), 2, 2))
    # Twice as wide as high: padded to a square, centred, then shrunk.
    wide = np.concatenate([images[0], images[1]], axis=1)
    expected = np.pad(wide, ((14, 14), (0, 0), (0, 0))).reshape(28, 2, 28, 2, 1).mean((1, 3))
    assert np.abs(decoded(wide[np.newaxis])[0] - expected).max() <= 0.5
