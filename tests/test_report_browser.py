"""The generated report in a real browser: headless Chromium through chromedriver.

Opens ``index.html`` of ``favorkern report --tiny`` in Debian's ``chromium`` (driven
by ``chromium-driver`` through selenium), checks that every image decoded
(``naturalWidth > 0``) and that the console shows no errors, and saves a full-page
screenshot to ``tmp_path`` and, when ``FAVORKERN_SCREENSHOT_DIR`` is set, there too.
Skipped only where Chromium or chromedriver is not installed
(``apt-get install chromium chromium-driver``).
"""

from __future__ import annotations

import os
import shutil

import pytest
from report_run import tiny_report

CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None
)
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless browser test needs Chromium and chromedriver on PATH "
    "(Debian: apt-get install chromium chromium-driver); "
    f"found chromium={CHROMIUM}, chromedriver={CHROMEDRIVER}",
)

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
    # Containers often have a 64 MB /dev/shm, too small for Chromium's renderer.
    "--disable-dev-shm-usage",
)
WIDTH = 1400


@pytest.fixture
def browser(tmp_path):
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:  # part of the test extra: a broken install, not a skip
        pytest.fail(f"selenium is missing ({exc}); run pip install -e '.[test]'")

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={WIDTH},1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path: selenium then never tries to download one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_report_renders_in_chromium(browser, tmp_path_factory, tmp_path):
    status, out = tiny_report(tmp_path_factory)
    assert status == 0
    browser.get((out / "index.html").resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    assert browser.title == "favorkern report"

    images = browser.execute_script(
        "return Array.from(document.images).map("
        "  img => ({alt: img.alt, complete: img.complete, width: img.naturalWidth,"
        "           height: img.naturalHeight, shown: img.getBoundingClientRect().width}));"
    )
    assert len(images) == 6
    for image in images:
        assert image["complete"], image["alt"]
        assert image["width"] > 0 and image["height"] > 0, f"not decoded: {image['alt']}"
        assert image["shown"] > 100, f"laid out too small: {image}"

    sections = browser.execute_script(
        "return Array.from(document.querySelectorAll('section h2')).map(h => h.textContent);"
    )
    assert len(sections) == 3
    assert browser.execute_script("return document.querySelectorAll('table').length") == 3

    console = browser.get_log("browser")
    errors = [entry for entry in console if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == [], f"console errors: {errors}"

    # Full-page screenshot: grow the window to the document's height.
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(WIDTH, min(int(height) + 200, 16000))
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    target = os.environ.get("FAVORKERN_SCREENSHOT_DIR")
    if target:
        os.makedirs(target, exist_ok=True)
        shutil.copy(shot, os.path.join(target, "report.png"))
