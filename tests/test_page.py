"""The draw-and-classify page in Debian's headless chromium, against the real server: what it
shows is what the SavedModel answers for the very bytes the page sent."""

import base64
import contextlib
import json
import math
import os
import shutil
import time
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw
from playwright.sync_api import sync_playwright
import pytest
import tensorflow as tf

from keras_tutorial import data, versions
from keras_tutorial.images import decode_images

pytest.importorskip("starlette", reason="the serve extra is not installed: "
                    "pip install -e '.[test,serve]'")
from serving_helpers import running_server  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
# A "4" in a unit box, as strokes of (x, y) points: drawn by mouse, and rendered by Pillow.
GLYPH = [[(0.66, 0.0), (0.0, 0.64), (0.9, 0.64)], [(0.62, 0.28), (0.62, 1.0)]]
GLYPH_AT, GLYPH_SIZE = (0.08, 0.1), 0.55  # Top left, large: in fractions of the pad's width.
PEN = 1 / 16  # The page's line width, in fractions of the pad's width.
QUIET_MS = 400  # Longer than the page's debounce, 150 ms.
WAIT_SECONDS = 30

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"Debian's chromium is not at {CHROMIUM} (.ci/run installs it with apt-get)")]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@contextlib.contextmanager
def opened_page(browser, export_dir: str, name: str) -> Iterator:
    """The page of a server of `export_dir`, once it shows the model's bars; no script errors."""
    with running_server(export_dir, name=name) as port:
        page = browser.new_page(viewport={"width": 960, "height": 700})
        errors = []
        page.on("pageerror", lambda error: errors.append(error))
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("li.bar")
        yield page
        page.close()
        assert not errors, errors


@pytest.fixture(scope="module")
def page(browser, export_dir):
    with opened_page(browser, export_dir, "mlp") as page:
        yield page


@pytest.fixture(scope="module")
def saved(export_dir):
    return tf.saved_model.load(os.path.join(export_dir, "1")).signatures


def _last_exchange(page, action) -> tuple[bytes, dict]:
    """Runs `action`, then returns the image bytes of the last predict request it made the
    page send, and that request's answer, once the page shows it."""
    requests = []

    def capture(request):
        if request.url.endswith(":predict"):
            requests.append(request)

    page.on("request", capture)
    try:
        action()
        deadline = time.monotonic() + WAIT_SECONDS
        while True:  # Until no request is on its way and no debounced one is due.
            count = len(requests)
            page.wait_for_timeout(QUIET_MS)
            if count and count == len(requests) and all(r.response() for r in requests):
                break
            assert time.monotonic() < deadline, "the page's requests did not settle"
    finally:
        page.remove_listener("request", capture)
    body = json.loads(requests[-1].post_data)
    assert body["signature_name"] == "serve_images"
    answer = requests[-1].response().json()
    while not _showing(page, answer):
        assert time.monotonic() < deadline, "the page did not show the answer"
        page.wait_for_timeout(20)
    return base64.b64decode(body["instances"][0]["b64"]), answer


def _showing(page, answer: dict) -> bool:
    if "error" in answer:
        return page.is_visible("#error")
    probabilities, _ = _shown(page)
    return probabilities.tolist() == np.float32(answer["predictions"][0]["probabilities"]).tolist()


def _shown(page) -> tuple[np.ndarray, str]:
    """The probabilities behind the page's bars, and the class it names."""
    values = page.eval_on_selector_all("li.bar", "items => items.map(i => i.dataset.probability)")
    return np.array([float(v) for v in values], np.float32), page.text_content("#answer")


def _seen(page) -> np.ndarray:
    """The 28x28 the page shows as what the model sees."""
    rgba = page.eval_on_selector(
        "#seen", "c => Array.from(c.getContext('2d').getImageData(0, 0, 28, 28).data)")
    return np.array(rgba, np.uint8).reshape(28, 28, 4)[..., :1]


def _draw_glyph(page) -> None:
    box = page.locator("#pad").bounding_box()
    for stroke in GLYPH:
        points = [(box["x"] + box["width"] * (GLYPH_AT[0] + GLYPH_SIZE * x),
                   box["y"] + box["width"] * (GLYPH_AT[1] + GLYPH_SIZE * y)) for x, y in stroke]
        page.mouse.move(*points[0])
        page.mouse.down()
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            for t in np.linspace(0, 1, 12)[1:]:
                page.mouse.move(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
        page.mouse.up()


def _render_glyph(size: int = 300, margin: int = 40) -> np.ndarray:
    """The same glyph drawn by Pillow at another size: white round-ended strokes on black."""
    width = round(size * PEN / GLYPH_SIZE)
    image = Image.new("L", (size + 2 * margin, size + 2 * margin))
    draw = ImageDraw.Draw(image)
    for stroke in GLYPH:
        points = [(margin + size * x, margin + size * y) for x, y in stroke]
        draw.line(points, fill=255, width=width, joint="curve")
        for x, y in points:
            draw.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=255)
    return np.asarray(image, np.float64)


def _area_weights(n: int, m: int) -> np.ndarray:
    """[m, n] weights of an area-averaging resize from n to m pixels."""
    scale, weights = n / m, np.zeros((m, n))
    for i in range(m):
        start, end = i * scale, (i + 1) * scale
        for j in range(math.floor(start), min(math.ceil(end), n)):
            weights[i, j] = (min(j + 1, end) - max(j, start)) / scale
    return weights


def _mnist_prepare(ink: np.ndarray) -> np.ndarray:
    """MNIST's preparation of a digit, in numpy: its bounding box fitted into 20x20 (aspect
    kept, areas averaged), then placed so its centre of mass is the 28x28 frame's centre."""
    rows, columns = np.nonzero(ink > 0)
    crop = ink[rows.min():rows.max() + 1, columns.min():columns.max() + 1]
    h, w = crop.shape
    bh, bw = (max(1, math.floor(side * 20 / max(h, w) + 0.5)) for side in (h, w))
    boxed = _area_weights(h, bh) @ crop @ _area_weights(w, bw).T
    mass = boxed.sum()
    cy = (boxed.sum(axis=1) @ (np.arange(bh) + 0.5)) / mass
    cx = (boxed.sum(axis=0) @ (np.arange(bw) + 0.5)) / mass
    top = min(max(math.floor(14 - cy + 0.5), 0), 28 - bh)
    left = min(max(math.floor(14 - cx + 0.5), 0), 28 - bw)
    frame = np.zeros((28, 28))
    frame[top:top + bh, left:left + bw] = boxed
    return np.round(frame).astype(np.uint8)[..., np.newaxis]


def _centre_of_mass(image: np.ndarray) -> np.ndarray:
    weights = image[..., 0].astype(np.float64)
    grid = np.indices(weights.shape) + 0.5
    return (grid * weights).sum(axis=(1, 2)) / weights.sum()


def test_a_fashion_model_asks_for_one_of_its_classes(page, tmp_path):
    names = ", ".join(data.CLASS_NAMES["fashion_mnist"])
    assert page.text_content("#hint") == f"Draw, drop or paste an image of one of: {names}."
    page.screenshot(path=str(tmp_path / "fashion_hint.png"))


def test_an_mnist_model_asks_for_a_digit(browser, export_dir, tmp_path):
    digits = shutil.copytree(export_dir, tmp_path / "digits")
    info_path = digits / "1" / versions.METADATA_FILE
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "class_names": list(data.CLASS_NAMES["mnist"])}))
    with opened_page(browser, str(digits), "digits") as page:
        assert page.text_content("#hint") == "Draw a digit, or drop or paste an image file."
        page.screenshot(path=str(tmp_path / "digit_hint.png"))


def test_a_drawing_is_answered_as_the_saved_model_answers_the_png_sent(page, saved, tmp_path):
    png, _ = _last_exchange(page, lambda: _draw_glyph(page))
    expected = saved["serve_images"](image_bytes=tf.constant([png]))
    probabilities, answer = _shown(page)
    np.testing.assert_array_equal(probabilities, expected["probabilities"].numpy()[0])
    assert answer == expected["class_names"].numpy()[0].decode()
    assert page.is_visible("li.bar.top")
    # The preview is the image sent, and exactly what serve_images gives the model.
    seen = _seen(page)
    np.testing.assert_array_equal(tf.io.decode_png(png, channels=1).numpy(), seen)
    np.testing.assert_array_equal(decode_images(tf.constant([png])).numpy()[0], seen)
    screenshot = tmp_path / "serve_page.png"
    page.screenshot(path=str(screenshot))
    assert screenshot.read_bytes().startswith(b"\x89PNG")


def test_a_drawing_is_prepared_as_mnist_prepared_its_digits(page):
    """The glyph drawn large in the pad's top left comes out as the same glyph rendered by
    Pillow and prepared in numpy as MNIST did: 20x20, centred by mass."""
    seen = _seen(page)
    expected = _mnist_prepare(_render_glyph())
    np.testing.assert_allclose(_centre_of_mass(seen), [14, 14], atol=0.5)
    rows, columns = np.nonzero(seen[..., 0])
    assert max(np.ptp(rows), np.ptp(columns)) + 1 == 20
    difference = np.abs(seen.astype(int) - expected.astype(int))
    assert difference.mean() < 4, difference.mean()  # 0.9 of 255 with Chromium 156.
    assert np.corrcoef(seen.ravel(), expected.ravel())[0, 1] > 0.98


def test_clear_empties_the_pad_the_preview_and_the_bars(page):
    page.click("#clear")
    probabilities, answer = _shown(page)
    assert not probabilities.any() and answer == "—"
    assert not _seen(page).any()
    brightest = page.eval_on_selector(
        "#pad", "c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
                ".reduce((most, v, i) => i % 4 === 3 ? most : Math.max(most, v), 0)")
    assert brightest == 0


def _drop(page, name: str, content: bytes, mime: str) -> None:
    """Drops a file on the pad, as a user dragging it from a file manager."""
    transfer = page.evaluate_handle(
        """([name, data, mime]) => {
             const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
             const transfer = new DataTransfer();
             transfer.items.add(new File([bytes], name, {type: mime}));
             return transfer;
           }""", [name, base64.b64encode(content).decode(), mime])
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})


def test_a_dropped_photo_is_sent_as_it_is_and_previewed_as_the_model_sees_it(
        page, saved, bordered_arrays):
    # A dark object on white paper, in colour, three times the size and not square.
    image = np.repeat(np.repeat(255 - bordered_arrays.x_test[5], 3, axis=0), 3, axis=1)
    photo = np.pad(np.repeat(image, 3, axis=-1), ((0, 0), (11, 13), (0, 0)),
                   constant_values=255)
    content = tf.io.encode_png(photo).numpy()
    sent, _ = _last_exchange(page, lambda: _drop(page, "photo.png", content, "image/png"))
    assert sent == content
    expected = saved["serve_images"](image_bytes=tf.constant([content]))
    probabilities, answer = _shown(page)
    np.testing.assert_array_equal(probabilities, expected["probabilities"].numpy()[0])
    assert answer == expected["class_names"].numpy()[0].decode()
    model_sees = decode_images(tf.constant([content])).numpy()[0].astype(int)
    assert np.abs(_seen(page).astype(int) - model_sees).max() <= 1


def test_a_dropped_file_that_is_not_an_image_shows_a_readable_error(page):
    _, answer = _last_exchange(
        page, lambda: _drop(page, "notes.txt", b"shopping: milk, eggs", "text/plain"))
    assert "Unknown image file format" in answer["error"]
    message = page.text_content("#error")
    assert message.startswith("notes.txt: ") and "Unknown image file format" in message
    assert page.text_content("#answer") == "—"
