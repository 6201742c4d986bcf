"""The search page in a real browser: headless Chromium (Debian's chromium + chromium-driver, installed by
``make sysdeps`` as root) driven by Selenium. Types a caption, submits, waits for the results, checks that the
clip with that caption is among them and that its <video> loads, and saves a screenshot (docs/img/search.png with LAVIMO_UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import shutil
import socket
import threading
import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/lib/chromium/chromedriver" if Path("/usr/lib/chromium/chromedriver").is_file() else None)
    return (browser, driver) if browser and driver else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_search_page_in_chromium(tmp_path_factory):
    found = _chromium()
    if found is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium chromium-driver; "
                    "`make sysdeps` does it as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[test]')")
    uvicorn = pytest.importorskip("uvicorn")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from lavimo.search.server import create_app

    data = _build(tmp_path_factory)
    r, index = data["r"], data["index"]
    # a random tiny model ranks arbitrarily: query a caption whose clip the API puts in the top 5, and check the
    # page shows exactly the API's top 5 (the ranking itself is tested in test_search.py)
    caption, api_top = None, []
    for e in index.iter_entries():
        top = [index.keyid(i) for i, _ in index.search(r.encode_text([e.captions[0]]), 5)]
        if e.keyid in top:
            caption, api_top = e.captions[0], top
            break
    assert caption is not None
    expected = {e.keyid for e in index.iter_entries() if caption in e.captions} & set(api_top)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(r, index), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120  # a poll: generous for a loaded machine
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900",
              "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(found[1]), options=opts)
    try:
        driver.set_page_load_timeout(30)
        driver.get(f"http://127.0.0.1:{port}/")
        box = driver.find_element(By.ID, "text")
        box.clear()
        box.send_keys(caption)
        driver.find_element(By.ID, "go").click()
        WebDriverWait(driver, 180).until(
            lambda d: d.find_element(By.ID, "results").get_attribute("data-done") == "1"
            or d.find_element(By.ID, "error").text)
        assert not driver.find_element(By.ID, "error").text
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
        keyids = [c.get_attribute("data-keyid") for c in cards]
        assert keyids == api_top and expected & set(keyids), (keyids, api_top, expected)
        hit = next(c for c in cards if c.get_attribute("data-keyid") in expected)
        video = hit.find_element(By.TAG_NAME, "video")
        WebDriverWait(driver, 120).until(lambda d: d.execute_script("return arguments[0].readyState", video) >= 1)
        assert caption in hit.text
        # the checkout is not written to unless asked: LAVIMO_UPDATE_SCREENSHOTS=1 refreshes docs/img/search.png
        out = (REPO / "docs" / "img" if os.environ.get("LAVIMO_UPDATE_SCREENSHOTS") == "1"
               else tmp_path_factory.mktemp("screenshot")) / "search.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        time.sleep(0.5)
        assert driver.save_screenshot(str(out))
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)


def _build(tmp_path_factory) -> dict:
    """A tiny shard set with larger frames (so the screenshot shows something), a random tiny model, its index."""
    import torch

    from lavimo.dataset.shards.stream import load_stats
    from tests.fixtures.tiny_shards import make_tiny_shards
    from lavimo.model import build_model, load_preset, save_checkpoint
    from lavimo.search.index import build_index
    from lavimo.search.model import load, preprocess_record

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("browser")
    shards = make_tiny_shards(root / "shards", n_train=2, n_val=0, n_test=12, n_classes=4, frames=(16, 20),
                              size=96, samples_per_shard=16)
    cfg = load_preset("tiny")
    ckpt = save_checkpoint(build_model(cfg), root / "best.safetensors",
                           extra={"preprocess": preprocess_record(cfg, *load_stats(shards))})
    r = load(ckpt)
    index, _ = build_index(r, root / "index", shards=shards, splits=["test"], progress=False)
    return {"r": r, "index": index}
