"""`embedlib serve` in a real browser: Debian's Chromium, driven by Selenium through Debian's chromedriver, on a
real root (tests/explained_root.py): search by sha256, open a neighbour, see the evidence it shares, open its
family, upload a file. Skipped, with the reason, when no browser is installed (.ci/run installs it).

The screenshot README shows (docs/serve.png) is this test's: set EMBEDLIB_SCREENSHOT=PATH to write it there
(committed reduced to 64 colours with Pillow's quantize, 118 KB -> 42 KB).
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest
from explained_root import build, running

from embedlib.query.serve import Site

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def _why_not() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install -y --no-install-recommends chromium chromium-driver)"
    if not os.access(DRIVER, os.X_OK):
        return f"no chromedriver at {DRIVER} (apt-get install -y --no-install-recommends chromium-driver)"
    if importlib.util.find_spec("selenium") is None:
        return "the selenium package is not installed (pip install -e '.[dev]')"
    return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=_why_not() or "")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1200,900", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # no driver download: Debian's
    driver.set_page_load_timeout(180)
    yield driver
    driver.quit()


def follow(b, click) -> None:
    """Click (a link, a submit button) and wait until the browser has loaded the next page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = b.find_element(By.TAG_NAME, "html")
    click()
    WebDriverWait(b, 180).until(expected_conditions.staleness_of(old))
    WebDriverWait(b, 180).until(lambda d: d.execute_script("return document.readyState") == "complete")


def test_search_neighbour_shared_words_family_upload(tmp_path_factory, system_files, browser, tmp_path):
    from selenium.webdriver.common.by import By

    real = build(str(tmp_path_factory.mktemp("browsed")), system_files)
    from embedlib import query

    con = query.connect(real.root)
    sha = con.execute("SELECT sha256 FROM embeddings WHERE path = $p", {"p": real.files[0].path}).fetchone()[0]
    con.close()
    with running(Site(real.root)) as url:
        b = browser
        b.get(url + "/")
        box = b.find_element(By.CSS_SELECTOR, "#search input[name=q]")
        box.send_keys(sha)
        follow(b, b.find_element(By.CSS_SELECTOR, "#search button").click)
        assert b.find_element(By.TAG_NAME, "h1").text == real.files[0].path
        assert sha in b.page_source

        # the neighbours table, with shared evidence; open the nearest neighbour
        rows = b.find_elements(By.CSS_SELECTOR, "#neighbours tbody tr")
        assert len(rows) >= 3
        shared = [el.text for el in b.find_elements(By.CSS_SELECTOR, "#neighbours .item")]
        assert shared and all(shared), "no shared words shown"
        if os.environ.get("EMBEDLIB_SCREENSHOT"):
            b.save_screenshot(os.environ["EMBEDLIB_SCREENSHOT"])
        first = rows[0].find_elements(By.CSS_SELECTOR, "td")[3].find_element(By.TAG_NAME, "a")
        neighbour_path = first.text
        follow(b, first.click)
        assert b.find_element(By.TAG_NAME, "h1").text == neighbour_path
        assert b.find_elements(By.CSS_SELECTOR, "#evidence tbody tr")
        # its byteplot loaded (a real PNG, decoded by the browser)
        width = b.execute_script("return document.querySelector('img.plot').naturalWidth")
        assert width == 64

        # why is it near? the explanation page, reached from the first file's neighbours table
        follow(b, b.back)
        follow(b, b.find_element(By.LINK_TEXT, "explain").click)
        sides = [td.text for td in b.find_elements(By.CSS_SELECTOR, "#explain tbody tr td:nth-child(2)")]
        assert "both" in sides

        # its family: characteristic words, where its neighbours are, its files
        follow(b, b.back)
        family = real.files[0].family
        follow(b, b.find_element(By.LINK_TEXT, family).click)
        assert b.find_element(By.TAG_NAME, "h1").text == f"Family {family}"
        assert b.find_elements(By.CSS_SELECTOR, "#profile tbody tr")
        assert b.find_elements(By.CSS_SELECTOR, "#family-files tbody tr")

        # upload a file: embedded with the root's model, its neighbours listed
        b.get(url + "/")
        b.find_element(By.CSS_SELECTOR, "#upload input[type=file]").send_keys(real.files[1].path)
        follow(b, b.find_element(By.CSS_SELECTOR, "#upload button").click)
        assert b.find_element(By.TAG_NAME, "h1").text == "Uploaded file"
        cells = b.find_elements(By.CSS_SELECTOR, "#neighbours tbody tr:first-child td")
        assert float(cells[1].text) < 1e-3  # the same content is in the root: itself, at distance 0
        assert b.find_elements(By.CSS_SELECTOR, "#neighbours .item")

        # hostile names stay text: nothing injected runs or renders as markup
        b.get(url + "/?q=src%2F")
        assert not b.find_elements(By.CSS_SELECTOR, "#matches script, #matches img")
        assert any("<script>" in a.text for a in b.find_elements(By.CSS_SELECTOR, "#matches a"))
