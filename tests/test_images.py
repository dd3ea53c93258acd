"""Image files become the pixels the models were trained on, inside the graph; a file costs what
its 28x28 output needs, not what it declares."""

import io
import os
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from keras_tutorial import images as image_files
from keras_tutorial import rest

UNKNOWN = "Unknown image file format. One of PNG, JPEG, GIF, BMP required."
BROKEN_GIF = "Invalid GIF data: its first frame is incomplete or malformed."
SPLIT_GIF = ("GIF not read: its first frame ends after more than 4096 blocks or changes of "
             "sub-block length.")
TOO_LARGE = ("Image of {} pixels is larger than serve_images accepts: at most 8192 pixels a side "
             "and 16777216 pixels in all")


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


@tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
def _old_decode_images(image_bytes):
    """decode_images as it was before it bounded its cost: the reference for its results."""
    def decode_one(encoded):
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        gray = tf.image.rgb_to_grayscale(tf.cast(image, tf.float32))
        border = tf.concat([tf.reshape(gray[0], [-1]), tf.reshape(gray[-1], [-1]),
                            tf.reshape(gray[:, 0], [-1]), tf.reshape(gray[:, -1], [-1])], 0)
        gray = tf.cond(tf.reduce_mean(border) > 127.5, lambda: 255.0 - gray, lambda: gray)
        size = tf.reduce_max(tf.shape(gray)[:2])
        square = tf.image.resize_with_crop_or_pad(gray, size, size)
        resized = tf.image.resize(square, [28, 28], method="area")
        return tf.cast(tf.round(tf.clip_by_value(resized, 0.0, 255.0)), tf.uint8)

    return tf.map_fn(decode_one, image_bytes,
                     fn_output_signature=tf.TensorSpec([28, 28, 1], tf.uint8))


def _decoded(encoded: bytes, decode=image_files.decode_images) -> np.ndarray:
    return decode(tf.constant([encoded])).numpy()[0]


def _refusal(encoded: bytes) -> str:
    """The one line our server answers for a file that decode_images refuses."""
    with pytest.raises(tf.errors.InvalidArgumentError) as excinfo:
        image_files.decode_images(tf.constant([encoded]))
    return str(rest.from_tf_error(excinfo.value))


def _pillow(image: Image.Image, image_format: str, **options) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format=image_format, **options)
    return stream.getvalue()


def _png_chunk(kind: bytes, content: bytes) -> bytes:
    return (struct.pack(">I", len(content)) + kind + content
            + struct.pack(">I", zlib.crc32(kind + content)))


def _black_png(width: int, height: int) -> bytes:
    """A gray PNG of zeros, written by hand: a few hundred bytes for millions of pixels."""
    rows = zlib.compress(bytes(width + 1) * height, 9)  # Each row: filter byte 0, then pixels.
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", rows)
            + _png_chunk(b"IEND", b""))


def _bmp_header(width: int, height: int) -> bytes:
    """A 24-bit BMP's headers for `width` x `height` pixels, and one row of them."""
    return (b"BM" + struct.pack("<IHHI", 54 + 3 * width, 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0)
            + bytes(3 * width))


def _gif(screen: tuple[int, int], frame: tuple[int, int],
         data: bytes = b"\x02\x04\x04\x41\x10\x05\x00") -> bytes:
    """A GIF with a 2-colour table and one frame that declares `frame` [width, height] inside
    a `screen`, then LZW's code size byte and sub-blocks `data` (by default 4 black pixels)."""
    return (b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + bytes(6)
            + b"," + struct.pack("<HHHHB", 0, 0, *frame, 0) + data + b";")


def _repeated_frames(count: int, side: int) -> bytes:
    """An animated GIF of `count` black frames of `side` x `side`: Pillow's one frame, repeated."""
    single = _pillow(Image.new("L", (side, side)), "GIF")
    table = 3 * 2 ** ((single[10] & 7) + 1) if single[10] & 0x80 else 0
    return single[:13 + table] + single[13 + table:-1] * count + b";"


@pytest.fixture(scope="module", autouse=True)
def traced():
    """decode_images traced once, so that a test's timings are its decoding alone."""
    _decoded(tf.io.encode_png(np.zeros([2, 2, 1], np.uint8)).numpy())


def test_pixels_are_those_of_the_padded_square_resize_within_one_grey_level():
    """The separable resize against the padded square it replaces, on random images."""
    rng = np.random.default_rng(0)
    sizes = [(1, 1), (1, 57), (57, 1), (1, 300), (300, 1), (3, 5), (29, 27), (14, 14),
             (28, 28), (56, 28), (97, 131), (100, 37), (480, 640), (999, 1000), (2, 2000)]
    differences = []
    for height, width in sizes:
        noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        bright = np.clip(200 + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
        for image in (noise, bright, noise[..., :1]):
            png = tf.io.encode_png(image).numpy()
            old = _decoded(png, _old_decode_images).astype(int)
            differences.append(np.abs(_decoded(png) - old))
    differences = np.concatenate([d.ravel() for d in differences])
    assert differences.max() <= 1
    assert np.mean(differences == 0) > 0.999, np.mean(differences == 0)
    # MNIST's own 28x28 images pass through unchanged.
    digits = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
    digits[:4], digits[-4:], digits[:, :4], digits[:, -4:] = 0, 0, 0, 0
    np.testing.assert_array_equal(_decoded(tf.io.encode_png(digits).numpy()), digits)


@pytest.mark.parametrize("encoded, size", [
    (_black_png(30000, 1), "30000x1"),  # 109 bytes, for a padded square of 3.6 GB of floats.
    (_black_png(100000, 1), "100000x1"),  # 177 bytes, for one of 40 GB.
    (_black_png(4097, 4096), "4097x4096"),
    (_bmp_header(9000, 9000), "9000x9000"),
    (_bmp_header(8193, -2), "8193x2"),  # Rows top down.
    (_gif((9000, 2), (2, 2)), "9000x2"),
], ids=["png-30000x1", "png-100000x1", "png-4097x4096", "bmp-9000x9000", "bmp-top-down",
        "gif-screen"])
def test_a_file_declaring_too_many_pixels_is_refused_at_once_in_one_line(encoded, size):
    started = time.monotonic()
    assert _refusal(encoded) == TOO_LARGE.format(size)
    assert time.monotonic() - started < 1


def test_a_large_jpeg_header_is_refused_and_the_caps_themselves_are_accepted():
    wide = _pillow(Image.new("L", (image_files.MAX_SIDE + 1, 8)), "JPEG")
    assert _refusal(wide) == TOO_LARGE.format("8193x8")
    assert _decoded(_black_png(image_files.MAX_SIDE, 1)).shape == (28, 28, 1)


@pytest.mark.parametrize("encoded, message", [
    (_pillow(Image.new("RGB", (8, 8)), "WEBP"), UNKNOWN),
    (_pillow(Image.new("RGB", (8, 8)), "TIFF"), UNKNOWN),
    (b"\xff\x0a\xfa\x7f\x01\x90\x08", UNKNOWN),  # A JPEG XL codestream.
    (b"\0\0\0\x0cJXL \r\n\x87\n", UNKNOWN),  # A JPEG XL container.
    (b"shopping: milk, eggs", UNKNOWN),
    (b"", "Input is empty."),
], ids=["webp", "tiff", "jpeg-xl", "jpeg-xl-container", "text", "empty"])
def test_only_png_jpeg_gif_and_bmp_are_accepted(encoded, message):
    assert _refusal(encoded) == message


def test_an_animated_gif_gives_its_first_frame():
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(rng.integers(0, 256, (40, 30), dtype=np.uint8)) for _ in range(3)]
    animated = _pillow(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = _decoded(_pillow(frames[0], "PNG"))
    np.testing.assert_array_equal(_decoded(animated), first)
    np.testing.assert_array_equal(_decoded(animated, _old_decode_images), first)
    assert not np.array_equal(_decoded(_pillow(frames[1], "PNG")), first)


def test_a_gif_frame_declaring_more_pixels_than_its_screen_is_refused():
    assert _decoded(_gif((20, 20), (2, 2))).shape == (28, 28, 1)
    assert _refusal(_gif((20, 20), (60000, 60000))) == TOO_LARGE.format("60000x60000")


def _tiny_sub_blocks(size: int) -> bytes:
    """About `size` bytes of sub-blocks of 1 and 2 bytes in turn, and their terminator."""
    return b"\x02" + b"\x01\x00\x02\x00\x00" * (size // 5) + b"\x00"


_SMALL_GIF = _gif((2, 2), (2, 2))
_FIRST_BLOCK = 13 + 6  # After the header, the screen and its 2-colour table.


@pytest.mark.parametrize("encoded, message", [
    (_SMALL_GIF[:12], BROKEN_GIF),
    (_SMALL_GIF[:-3], BROKEN_GIF),
    (_SMALL_GIF[:_FIRST_BLOCK] + b"\x21\xfe\x05abc", BROKEN_GIF),
    (_SMALL_GIF[:_FIRST_BLOCK] + b"\x07" + _SMALL_GIF[_FIRST_BLOCK:], BROKEN_GIF),
    (_SMALL_GIF[:_FIRST_BLOCK] + b";", BROKEN_GIF),
    (_gif((2, 2), (2, 2), _tiny_sub_blocks(1 << 20)), SPLIT_GIF),
    (_SMALL_GIF[:_FIRST_BLOCK] + b"\x21\xfe\x01x\x00" * 5000 + _SMALL_GIF[_FIRST_BLOCK:],
     SPLIT_GIF),
], ids=["cut-in-header", "cut-in-data", "cut-in-extension", "unknown-block", "no-frame",
        "tiny-sub-blocks", "many-extensions"])
def test_a_broken_gif_is_refused_within_a_bounded_walk(encoded, message):
    started = time.monotonic()
    assert _refusal(encoded) == message
    assert time.monotonic() - started < 5  # Step by step, a MiB of tiny sub-blocks takes minutes.


def _photo(height: int, width: int) -> np.ndarray:
    """Smooth colour gradients, a dark object and sensor noise."""
    rows, columns = np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32)
    waves = np.cos(rows / 200)[:, None, None] * np.sin(columns[:, None] / 300 + np.arange(3))
    image = 127 + 100 * waves
    image[height // 4:3 * height // 4, width // 3:2 * width // 3] = 30
    noise = np.random.default_rng(2).standard_normal(image.shape, np.float32)
    return np.clip(image + 8 * noise, 0, 255).astype(np.uint8)


def test_a_large_jpeg_is_decoded_at_reduced_scale_close_to_full_size():
    jpeg = tf.io.encode_jpeg(_photo(2000, 3000), quality=90).numpy()
    eighth = tf.io.encode_png(tf.io.decode_jpeg(jpeg, channels=3, ratio=8)).numpy()
    np.testing.assert_array_equal(_decoded(jpeg), _decoded(eighth))
    full = _decoded(jpeg, _old_decode_images).astype(int)
    assert np.abs(_decoded(jpeg) - full).mean() < 3
    # Up to 448 pixels a side, a JPEG is decoded whole, as before.
    small = tf.io.encode_jpeg(_photo(300, 448)).numpy()
    assert np.abs(_decoded(small).astype(int) - _decoded(small, _old_decode_images)).max() <= 1


_PEAK_MEMORY = """
import resource, sys
import numpy as np, tensorflow as tf
from keras_tutorial import images
warm_ups = [tf.io.encode_png(np.zeros([600, 600, 1], np.uint8)), open(sys.argv[2], "rb").read()]
for warm_up in warm_ups:  # Traced, and each kernel used once.
    images.decode_images(tf.reshape(warm_up, [1]))
encoded = open(sys.argv[1], "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    images.decode_images(tf.constant([encoded] * int(sys.argv[3])))
except tf.errors.InvalidArgumentError:
    pass
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.slow
@pytest.mark.parametrize("make_file, batch, bound_mib", [
    (lambda: _black_png(30000, 1), 1, 8),  # Refused before anything is decoded.
    (lambda: _repeated_frames(100, 2000), 1, 40),  # One frame: 11 MiB of RGB, 4 in giflib.
    (lambda: _black_png(4096, 4096), 1, 80),  # 48 MiB of RGB, a few MiB of float slices.
    (lambda: _black_png(4096, 4096), 4, 80),  # One image at a time, not two or more.
], ids=["png-bomb", "gif-100-frames", "largest-png", "four-largest-pngs"])
def test_peak_memory_grows_with_the_decoded_image_not_the_declared_one(
        tmp_path, make_file, batch, bound_mib):
    """Peak RSS in a fresh process, after decode_images has run once on a small file of the
    same format: what decoding this file added."""
    path, small = tmp_path / "image", tmp_path / "small"
    path.write_bytes(make_file())
    small.write_bytes(_repeated_frames(2, 30) if path.read_bytes().startswith(b"GIF")
                      else _black_png(30, 30))
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-c", _PEAK_MEMORY, str(path), str(small), str(batch)]
    printed = subprocess.run(command, capture_output=True, text=True, check=True,
                             env=environment, timeout=300).stdout
    peak_mib = int(printed.split()[-1]) / 1024  # ru_maxrss is in KiB.
    assert peak_mib < bound_mib, f"{peak_mib:.0f} MiB"


@pytest.mark.slow
def test_the_exported_serve_images_refuses_the_bomb(export_dir):
    serve_images = tf.saved_model.load(os.path.join(export_dir, "1")).signatures["serve_images"]
    with pytest.raises(tf.errors.InvalidArgumentError) as excinfo:
        serve_images(image_bytes=tf.constant([_black_png(30000, 1)]))
    assert str(rest.from_tf_error(excinfo.value)) == TOO_LARGE.format("30000x1")
