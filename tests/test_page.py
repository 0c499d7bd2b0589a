"""The drawing page and the API's /docs in a real headless Chromium that reaches nothing but 127.0.0.1: strokes drawn
with pointer events, the guess read off the page; the OpenAPI page rendered from the server's own files."""
import io
import time

import numpy as np
import pytest
import requests

from conftest import digit_images, png
from mnist_cnn.images import decode_image, to_model_image
from tools.browser import PHONE, SEVEN, canvas_png, chromium_missing, draw, shown_label, start_chromium

pytestmark = [pytest.mark.slow, pytest.mark.ci_prerequisite]  # a skip fails where .ci/run installs it


@pytest.fixture(scope="module")
def browser():
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    driver = start_chromium()
    yield driver
    driver.quit()


@pytest.fixture(autouse=True)
def only_the_server(browser, served):
    """After each test: every file the page loaded came from the server (the browser resolves no host name)."""
    yield
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name);")
    assert [url for url in loaded if not url.startswith(served["url"] + "/")] == []


def settled_label(driver, url, timeout=20):
    """The label the page shows once it matches the API's answer for the canvas as it is now drawn."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        expected = requests.post(f"{url}/predict", files={"file": ("c.png", canvas_png(driver), "image/png")}).json()
        if shown_label(driver) == expected["label"]:
            return expected
        time.sleep(0.2)
    raise AssertionError(f"the page shows {shown_label(driver)!r}, the API says {expected['label']!r}")


@pytest.mark.parametrize("kind", ["mouse", "touch", "pen"])
def test_drawing_a_digit_stroke_by_stroke_shows_the_guess(browser, served, kind, tmp_path):
    browser.get(served["url"] + "/")
    assert browser.find_element("id", "pad").get_attribute("aria-label")
    assert shown_label(browser) == "–"
    draw(browser, SEVEN[:1], kind)  # the first stroke alone is already a guess
    first = settled_label(browser, served["url"])
    draw(browser, SEVEN[1:], kind)
    answer = settled_label(browser, served["url"])
    assert answer["label"] in [str(d) for d in range(10)] and canvas_png(browser) != b""
    shown = shown_probabilities(browser)
    assert len(shown) == 10 and max(shown, key=shown.get) == answer["label"]
    assert first["top"] != answer["top"]  # the second stroke changed what the model sees
    screenshot = tmp_path / "page.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Clear, clicked in the page: after touch input, emulated Chrome sometimes makes no click of a tap at all
    browser.execute_script("arguments[0].click();", browser.find_element("id", "clear"))
    deadline = time.time() + 5  # the click is handled asynchronously in the page
    while shown_label(browser) != "–" and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # and stays cleared: an answer for the old drawing arriving now is dropped
    assert shown_label(browser) == "–" and shown_probabilities(browser) == {}
    assert seen_pixels(browser).max() == 0  # and what the model saw is cleared with it


def shown_probabilities(driver):
    """{class name: probability} as the page lists them, in its order."""
    return {item.get_attribute("data-label"): float(item.get_attribute("data-probability"))
            for item in driver.find_elements("css selector", "#probabilities li")}


def seen_pixels(driver):
    """The page's picture of what the model saw: its 28 x 28 canvas' gray levels (0-255)."""
    rgba = driver.execute_script("const c = document.getElementById('seen');"
                                 "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data);")
    return np.array(rgba, np.int32).reshape(28, 28, 4)[..., 0]


def test_the_page_shows_what_the_model_saw_and_every_class(browser, served, tmp_path):
    """Beside the canvas, its 28 x 28 image after the normalisation (the server's, which predict uses too), pixel
    for pixel; below, every class with its probability, in the model's class order, as the API answers them."""
    browser.get(served["url"] + "/")
    draw(browser, SEVEN, "mouse")
    drawn = canvas_png(browser)
    expected = np.round(255 * to_model_image(decode_image(io.BytesIO(drawn)))).astype(np.int32)
    assert expected.sum() > 0
    deadline = time.time() + 20  # the page's answer to the last stroke
    while np.abs(seen_pixels(browser) - expected).max() > 1 and time.time() < deadline:
        time.sleep(0.2)
    assert np.abs(seen_pixels(browser) - expected).max() <= 1  # 4 decimals in the JSON: at most 1 level apart
    answer = requests.post(f"{served['url']}/predict?top=10", files={"file": ("c.png", drawn, "image/png")}).json()
    shown = shown_probabilities(browser)
    assert list(shown) == requests.get(f"{served['url']}/health").json()["classes"]
    assert abs(sum(shown.values()) - 1) < 1e-5 and shown_label(browser) == answer["label"]
    assert shown == pytest.approx({t["label"]: t["probability"] for t in answer["top"]}, abs=1e-6)
    texts = [item.text.split() for item in browser.find_elements("css selector", "#probabilities li")]
    assert [text[0] for text in texts] == list(shown)
    assert [text[1] for text in texts] == [f"{100 * p:.1f}%" for p in shown.values()]
    pad, beside = (browser.execute_script(f"const r = document.getElementById('{name}').getBoundingClientRect();"
                                          f"return [r.left, r.right, r.top, r.bottom];") for name in ("pad", "seen"))
    assert beside[0] >= pad[1] and beside[2] < pad[3] and beside[1] - beside[0] >= 56  # to its right, 2x or more


def test_uploading_an_image_file_shows_its_guess(browser, served, tmp_path):
    (tmp_path / "three.png").write_bytes(png(digit_images(4, seed=3)[0][3]))
    browser.get(served["url"] + "/")
    browser.find_element("id", "file").send_keys(str(tmp_path / "three.png"))
    expected = requests.post(f"{served['url']}/predict",
                             files={"file": ("three.png", (tmp_path / "three.png").read_bytes(), "image/png")}).json()
    deadline = time.time() + 20
    while shown_label(browser) != expected["label"] and time.time() < deadline:
        time.sleep(0.2)
    assert shown_label(browser) == expected["label"]


def test_the_page_fits_a_phone_screen(browser, served):
    browser.get(served["url"] + "/")
    width, scroll_width = browser.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
    # laid out at the phone's own width: without the viewport tag Chromium lays a page out 980 px wide, and one
    # with something wider than the screen is zoomed out to fit it (innerWidth grows to 608 for a 600 px box)
    assert width == PHONE[0] and scroll_width == width
    pad = browser.execute_script("const r = document.getElementById('pad').getBoundingClientRect();"
                                 "return [r.width, r.height];")
    assert 200 <= pad[0] <= width and abs(pad[0] - pad[1]) < 1


def test_the_api_docs_render_with_no_network(browser, served):
    """Swagger UI at /docs draws every operation from the server's own copy of its scripts. FastAPI's default page
    loads them from a CDN, and stays blank here: the browser reaches no other host."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get("about:blank")  # the browser is offline: the CDN FastAPI's default page loads from is out of reach
    cdn = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css').then(() => done('reached'),"
        "                                                                       e => done(String(e)));")
    assert cdn != "reached"
    browser.get(served["url"] + "/docs")
    operation = '.opblock-summary-path[data-path="{}"]'
    predict = WebDriverWait(browser, 20).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, operation.format("/predict"))))
    block = predict.find_element(By.XPATH, "ancestor::div[contains(@class, 'opblock ')]")
    assert "opblock-post" in block.get_attribute("class") and predict.text == "/predict"
    for path in ("/predict/batch", "/health"):
        assert browser.find_elements(By.CSS_SELECTOR, operation.format(path))
    schemas = browser.find_element(By.CSS_SELECTOR, "section.models").text
    assert all(name in schemas for name in ("Prediction", "BatchPrediction", "Health", "Problem")), schemas
