"""The README's screenshot of the drawing page: the project's model served on 127.0.0.1, a 7 drawn stroke by
stroke in headless Chromium (the browser test's own steps), the page saved as docs/images/drawing-page.png.

    python -m tools.screenshot     # needs dvc repro's models/ and Debian's chromium and chromium-driver
"""
import os
import sys
import time

from tools.browser import SEVEN, chromium_missing, draw, shown_label, start_chromium
from tools.project import REPO, served_model

OUT = os.path.join(REPO, "docs", "images", "drawing-page.png")


def main():
    reason = chromium_missing()
    if reason:
        sys.exit(f"error: {reason}")
    with served_model(REPO) as (_, url):
        driver = start_chromium()
        try:
            driver.get(url + "/")
            draw(driver, SEVEN, "touch")
            deadline = time.time() + 20
            while shown_label(driver) == "–" and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(1)  # the last stroke's answer
            os.makedirs(os.path.dirname(OUT), exist_ok=True)
            driver.save_screenshot(OUT)
            print(f"screenshot: {OUT} (the page shows {shown_label(driver)})")
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
