"""A real headless Chromium (Debian's chromium and chromium-driver) driving the drawing page: for the
browser test and for the README's screenshot (python -m tools.screenshot)."""
import base64
import os
import shutil

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromedriver")
PHONE = (412, 915)  # a phone-sized viewport, CSS pixels

# A 7 in the canvas' own 280 x 280 pixels: the top bar, then the downstroke; each stroke a list of points
SEVEN = [[(80, 70), (130, 70), (180, 70), (205, 72)],
         [(205, 72), (185, 115), (165, 160), (148, 200), (135, 235)]]


def chromium_missing():
    """Why the browser can't start here, or None."""
    missing = [path for path in CHROMIUM if not (os.path.exists(path) or shutil.which(os.path.basename(path)))]
    if missing:
        return (f"{', '.join(missing)} not installed: apt-get install chromium chromium-driver "
                f"(Debian's packages; .ci/run installs them when it runs as root)")
    return None


def start_chromium(size=PHONE, offline=True):
    """Headless Chromium on a phone-sized screen. offline: no host name resolves, so a page that needs a CDN (or
    anything off this machine) fails here as it would with no network; 127.0.0.1 still answers."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM[0]
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={size[0]},{size[1]}", "--hide-scrollbars"):
        options.add_argument(argument)
    if offline:
        options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    # A phone's screen: headless Chromium's windows are at least 500 pixels wide, an emulated device is not
    options.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": size[0], "height": size[1],
                                                                          "pixelRatio": 2.0, "touch": True}})
    return webdriver.Chrome(service=Service(CHROMIUM[1]), options=options)


def draw(driver, strokes, kind="mouse"):
    """Draw strokes on the page's canvas with real pointer input: a mouse, a pen or a finger (touch)."""
    from selenium.webdriver.common.actions import interaction
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.pointer_input import PointerInput
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "pad")
    box = driver.execute_script("const r = arguments[0].getBoundingClientRect();"
                                "return [r.left, r.top, r.width, r.height, arguments[0].width];", canvas)
    left, top, width, height, pixels = box
    kinds = {"mouse": interaction.POINTER_MOUSE, "pen": interaction.POINTER_PEN, "touch": interaction.POINTER_TOUCH}
    builder = ActionBuilder(driver, mouse=PointerInput(kinds[kind], kind), duration=20)
    pointer = builder.pointer_action
    for stroke in strokes:
        for i, (x, y) in enumerate(stroke):
            pointer.move_to_location(int(left + x * width / pixels), int(top + y * height / pixels))
            if i == 0:
                pointer.pointer_down()
        pointer.pointer_up()
    builder.perform()


def canvas_png(driver):
    """The canvas as the PNG the page sends to /predict."""
    url = driver.execute_script("return document.getElementById('pad').toDataURL('image/png');")
    return base64.b64decode(url.split(",", 1)[1])


def shown_label(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "label").text
