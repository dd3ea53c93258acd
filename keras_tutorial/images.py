"""Encoded image files -> the 28x28 uint8 pixels the models were trained on, inside the graph.

The exported `serve_images` signature runs this, so a server, `predict` and TFLite's users see
one preparation: no Python in the serving path.

Decoding costs what the 28x28 output needs, not what a file declares. Before anything is
decoded, the image's size is read from its header and an image larger than `MAX_SIDE` pixels a
side or `MAX_PIXELS` in all is refused, as is anything but PNG, JPEG, GIF and BMP. A GIF's
blocks are walked to its first frame's end (a GIF broken before it, or splitting it into
thousands of small blocks, is refused), that frame's size is checked too, and only that frame
is decoded; a large JPEG is decoded at 1/2, 1/4 or 1/8 scale. The resize never builds the
padded square: each image holds its decoded uint8 pixels and float rows a slice at a time, and
a batch is decoded one image at a time.
"""

from __future__ import annotations

import tensorflow as tf

from keras_tutorial import data

_HEIGHT, _WIDTH, _ = data.IMAGE_SHAPE

# Room for 12 MP phone photos (4032x3024) and 4K screenshots (3840x2160), and for long strips;
# a decoded image then holds at most 48 MiB of pixels.
MAX_SIDE = 8192
MAX_PIXELS = 4096 * 4096

UNKNOWN_FORMAT = "Unknown image file format. One of PNG, JPEG, GIF, BMP required."
_TOO_LARGE = (f" pixels is larger than serve_images accepts: at most {MAX_SIDE} pixels a side "
              f"and {MAX_PIXELS} pixels in all")
_BROKEN_GIF = "Invalid GIF data: its first frame is incomplete or malformed."
_GIF_STEPS = 4096  # Blocks, or runs of equal sub-blocks: real files need a few dozen.
_SPLIT_GIF = (f"GIF not read: its first frame ends after more than {_GIF_STEPS} blocks or "
              "changes of sub-block length.")

# TensorFlow's own signatures (decode_image_op.cc), indexed by format.
_PNG, _JPEG, _GIF, _BMP, _UNKNOWN = range(5)
_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF8", b"BM")
_HEAD_BYTES = 32  # Enough for every signature and size field read below.

# A JPEG is decoded at the smallest scale that keeps its longest side above this: 8 decoded
# pixels per output pixel, where the area average hides the scaled decoding's blur.
_JPEG_MIN_SIDE = 8 * max(_HEIGHT, _WIDTH)
_JPEG_RATIOS = (1, 2, 4, 8)

_GRAY_WEIGHTS = ((0.2989,), (0.587,), (0.114,))  # tf.image.rgb_to_grayscale's, as a column.

# Float work on a decoded image goes this many pixels at a time: a few MiB, however large.
_SLICE_PIXELS = 1 << 18

_GIF_RUN = 1024  # Sub-blocks of one length that a step of the GIF walk skips at most.

# Where a GIF walk is: before a block, in an extension's or the first image's sub-blocks, past
# the first image, or at a byte that starts no block.
_BLOCK, _EXTENSION, _IMAGE, _DONE, _BROKEN = range(5)


def _unless(ok: tf.Tensor, message: str | tf.Tensor) -> tf.Tensor:
    """0 if `ok`, else an InvalidArgumentError whose last line is `message`. Add it to a value
    that decoding needs: Grappler drops control dependencies on a stateless op such as this."""
    # StringToNumber ends its error with the unparsed string verbatim, so after a newline the
    # message is a line of its own, which rest.from_tf_error keeps; tf.debugging.Assert would
    # wrap it in `assertion failed: [...]`.
    refusal = tf.strings.join(["\n", message])
    return tf.strings.to_number(tf.where(ok, "0", refusal), out_type=tf.int32)


def _bytes(encoded: tf.Tensor, length: int | None = None) -> tf.Tensor:
    """The file's bytes as int32, zero-padded so reads a little past its end are defined."""
    padded = tf.strings.join([encoded, b"\0" * _HEAD_BYTES])
    if length is not None:
        padded = tf.strings.substr(padded, 0, length)
    return tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int32)


def _format(encoded: tf.Tensor) -> tf.Tensor:
    """The index of the file's format in `_SIGNATURES`, or `_UNKNOWN`."""
    lengths = [len(signature) for signature in _SIGNATURES]
    starts = tf.strings.substr(encoded, [0] * len(lengths), lengths)
    matches = tf.cast(tf.equal(starts, _SIGNATURES), tf.int32)
    return tf.where(tf.reduce_any(matches > 0), tf.cast(tf.argmax(matches), tf.int32), _UNKNOWN)


def _number(head: tf.Tensor, start: int, length: int, big_endian: bool) -> tf.Tensor:
    """The unsigned integer of `length` bytes at `start`, as int64."""
    digits = tf.cast(head[start:start + length], tf.int64)
    weights = [256 ** i for i in range(length)]
    return tf.reduce_sum(digits * tf.constant(weights[::-1] if big_endian else weights, tf.int64))


def _bmp_side(head: tf.Tensor, start: int) -> tf.Tensor:
    """BMP's signed little-endian int32 at `start`, as its magnitude: rows may run top down."""
    value = _number(head, start, 4, big_endian=False)
    return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))


def _declared_size(encoded: tf.Tensor, head: tf.Tensor, kind: tf.Tensor) -> tf.Tensor:
    """[width, height] int64 as the file's header declares them, read without decoding."""
    def jpeg():
        height, width, _ = tf.unstack(tf.image.extract_jpeg_shape(encoded, tf.int64))
        return tf.stack([width, height])

    return tf.switch_case(kind, {
        _PNG: lambda: tf.stack([_number(head, 16, 4, big_endian=True),
                                _number(head, 20, 4, big_endian=True)]),
        _JPEG: jpeg,
        _GIF: lambda: tf.stack([_number(head, 6, 2, big_endian=False),
                                _number(head, 8, 2, big_endian=False)]),
        _BMP: lambda: tf.stack([_bmp_side(head, 18), _bmp_side(head, 22)]),
    })


def _within_caps(size: tf.Tensor) -> tf.Tensor:
    """0 if [width, height] is within `MAX_SIDE` and `MAX_PIXELS`; else the refusal naming it."""
    size = tf.cast(size, tf.int64)
    # A side above the cap fails before an overflowing product could pass.
    ok = tf.reduce_all(size <= MAX_SIDE) & (size[0] * size[1] <= MAX_PIXELS)
    message = tf.strings.join([tf.strings.as_string(size[0]), "x",
                               tf.strings.as_string(size[1])])
    return _unless(ok, tf.strings.join(["Image of ", message, _TOO_LARGE]))


def _colour_table(flags: tf.Tensor) -> tf.Tensor:
    """The length in bytes of the colour table that a GIF's packed `flags` byte announces."""
    return tf.where(flags >= 0x80, 3 * tf.bitwise.left_shift(2, flags % 8), 0)


def _run_end(data: tf.Tensor, position: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """Where the run of sub-blocks of `length` bytes that starts at `position` ends, looking at
    up to `_GIF_RUN` of them: encoders write an image's data as 255-byte sub-blocks."""
    starts = position + (length + 1) * tf.range(_GIF_RUN + 1)
    same = tf.gather(data, tf.minimum(starts, tf.size(data) - 1)) == length
    run = tf.reduce_sum(tf.math.cumprod(tf.cast(same, tf.int32)))
    return position + (length + 1) * tf.minimum(run, _GIF_RUN)


def _gif_step(data: tf.Tensor, position: tf.Tensor, phase: tf.Tensor, frame: tf.Tensor):
    """One block, or one run of equal sub-blocks, further."""
    window = data[position:position + 10]
    first = window[0]
    # In sub-blocks, `first` is a length; a zero length ends the extension or the image.
    in_data = (phase == _EXTENSION) | (phase == _IMAGE)
    data_end = tf.where(phase == _IMAGE, _DONE, _BLOCK)
    data_phase = tf.where(first == 0, data_end, phase)
    data_position = tf.where(first == 0, position + 1, _run_end(data, position, first))
    # Between blocks, `first` is an extension (0x21, then a label) or an image descriptor (0x2C,
    # 9 bytes, its colour table, then LZW's code size byte).
    is_extension, is_image = first == 0x21, first == 0x2C
    block_phase = tf.where(is_extension, _EXTENSION, tf.where(is_image, _IMAGE, _BROKEN))
    block_length = tf.where(is_extension, 2, 11 + _colour_table(window[9]))
    image_size = tf.stack([window[5] + 256 * window[6], window[7] + 256 * window[8]])
    return (tf.where(in_data, data_position, position + block_length),
            tf.where(in_data, data_phase, block_phase),
            tf.where(~in_data & is_image, image_size, frame))


def _gif_first_frame(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The length of the GIF up to its first frame's end, and that frame's [width, height]."""
    data = _bytes(encoded)
    length = tf.strings.length(encoded)

    def walking(position, phase, _):
        return (phase < _DONE) & (position < length)

    # Every step moves forward or stops; a file of many small blocks meets the step limit.
    end, phase, frame = tf.while_loop(
        walking, lambda *state: _gif_step(data, *state),
        (13 + _colour_table(data[10]), tf.constant(_BLOCK), tf.zeros([2], tf.int32)),
        maximum_iterations=_GIF_STEPS)
    unfinished = (phase < _DONE) & (end < length)
    end += _unless(phase == _DONE, tf.where(unfinished, _SPLIT_GIF, _BROKEN_GIF))
    return end, frame


def _decode_gif(encoded: tf.Tensor) -> tf.Tensor:
    """The first frame alone, on a canvas of its own size: giflib decodes every frame of the
    file it is given."""
    end, frame = _gif_first_frame(encoded)
    end += _within_caps(frame)
    first_frame = tf.strings.join([tf.strings.substr(encoded, 0, end), b"\x3b"])  # The trailer.
    return tf.io.decode_image(first_frame, channels=3, expand_animations=False)


def _decode_jpeg(encoded: tf.Tensor, longest: tf.Tensor) -> tf.Tensor:
    """Decoded at the smallest of 1, 1/2, 1/4, 1/8 scale that keeps the longest side above
    `_JPEG_MIN_SIDE`; libjpeg then never holds the full-size image."""
    scales = [tf.cast(longest > _JPEG_MIN_SIDE * ratio, tf.int32) for ratio in _JPEG_RATIOS[1:]]
    return tf.switch_case(tf.add_n(scales), [
        lambda ratio=ratio: tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)
        for ratio in _JPEG_RATIOS])


def _decode(encoded: tf.Tensor, kind: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """uint8 [height, width, 3] as tf.io.decode_image gives it, but a large JPEG at reduced
    scale and a GIF's first frame only."""
    def whole():
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)

    return tf.switch_case(kind, {_PNG: whole, _BMP: whole, _GIF: lambda: _decode_gif(encoded),
                                 _JPEG: lambda: _decode_jpeg(encoded, tf.reduce_max(size))})


def _area_weights(length: tf.Tensor, side: tf.Tensor, output: int) -> tf.Tensor:
    """[output, length]: each output pixel's share of each image pixel, when the image is
    centred on a zero-padded square of `side` and that is area-averaged to `output` pixels."""
    scale = tf.cast(side, tf.float32) / output
    offset = tf.cast((side - length) // 2, tf.float32)  # As tf.image.resize_with_crop_or_pad.
    starts = tf.range(output, dtype=tf.float32)[:, tf.newaxis] * scale - offset
    pixels = tf.range(tf.cast(length, tf.float32))
    overlap = tf.minimum(pixels + 1, starts + scale) - tf.maximum(pixels, starts)
    return tf.maximum(overlap, 0.0) / scale


def _gray(pixels: tf.Tensor) -> tf.Tensor:
    """uint8 [..., 3] -> float32 [...]: tf.image.rgb_to_grayscale's one matmul, without its
    general-purpose reshaping."""
    flat = tf.reshape(tf.cast(pixels, tf.float32), [-1, 3])
    return tf.reshape(tf.matmul(flat, _GRAY_WEIGHTS), tf.shape(pixels)[:-1])


def _bright_border(image: tf.Tensor) -> tf.Tensor:
    """Whether the border's mean gray is above mid-grey: dark ink on light paper."""
    border = tf.concat([image[0], image[-1], image[:, 0], image[:, -1]], 0)
    return tf.reduce_mean(_gray(border)) > 127.5


def _weighted_sum(pixels: tf.Tensor, rows: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
    """rows @ gray(pixels) @ columns^T."""
    return tf.matmul(rows, tf.matmul(_gray(pixels), columns, transpose_b=True))


def _area_average(image: tf.Tensor, rows: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
    """The weighted sum, converting at most `_SLICE_PIXELS` of the image to float at a time."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    step = tf.maximum(1, _SLICE_PIXELS // width)

    def add_slice(start, total):
        end = start + step
        return end, total + _weighted_sum(image[start:end], rows[:, start:end], columns)

    def by_slices():
        # One slice at a time: otherwise the loop would convert several slices at once.
        return tf.while_loop(lambda start, _: start < height, add_slice,
                             (tf.constant(0), tf.zeros([_HEIGHT, _WIDTH])),
                             parallel_iterations=1)[1]

    return tf.cond(step >= height, lambda: _weighted_sum(image, rows, columns), by_slices)


def _mnist_pixels(image: tf.Tensor) -> tf.Tensor:
    """Gray, inverted on a bright border, centred on a black square, area-averaged to 28x28.

    The same sums as tf.image.resize(method="area") of the padded square, taken separably
    over the image's own rows and columns; the padding adds nothing to them."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    side = tf.maximum(height, width)
    rows, columns = _area_weights(height, side, _HEIGHT), _area_weights(width, side, _WIDTH)
    average = _area_average(image, rows, columns)
    # Averaging is linear: inverting first gives 255 times each output's share of the image,
    # less the average; the padding stays black.
    coverage = tf.reduce_sum(rows, 1)[:, tf.newaxis] * tf.reduce_sum(columns, 1)[tf.newaxis, :]
    average = tf.where(_bright_border(image), 255.0 * coverage - average, average)
    return tf.cast(tf.round(tf.clip_by_value(average, 0.0, 255.0)), tf.uint8)[..., tf.newaxis]


def _decode_one(encoded: tf.Tensor) -> tf.Tensor:
    """One file's 28x28 pixels; its format and declared size are checked before it is decoded."""
    head = _bytes(encoded, _HEAD_BYTES)
    kind = _format(encoded) + _unless(tf.strings.length(encoded) > 0, "Input is empty.")
    kind += _unless(kind != _UNKNOWN, UNKNOWN_FORMAT)
    size = _declared_size(encoded, head, kind)
    return _mnist_pixels(_decode(encoded, kind + _within_caps(size), size))


@tf.function(input_signature=[tf.TensorSpec([None], tf.string)], autograph=False)
def decode_images(image_bytes: tf.Tensor) -> tf.Tensor:
    """Encoded image files [N] -> uint8 pixels [N,28,28,1] as the models were trained on them.

    Each image becomes gray, is inverted if its border is bright (dark ink on white paper, the
    opposite of MNIST's white on black), is padded to a square with the background, and is
    resized to 28x28 by averaging areas, as Fashion-MNIST's own images were made. The pixels
    stay in the 0..255 range: the model rescales them itself. One image is decoded at a time,
    so a batch of large images needs no more memory than its largest.
    """
    return tf.map_fn(_decode_one, image_bytes, parallel_iterations=1,
                     fn_output_signature=tf.TensorSpec(data.IMAGE_SHAPE, tf.uint8))
