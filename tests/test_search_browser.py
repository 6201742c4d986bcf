"""The search page in a real browser: headless Chromium (Debian's chromium + chromium-driver, installed by
``make sysdeps`` as root) driven by Selenium, every flow of the page at 1280 px and at 390 px (a phone, emulated
with its viewport): a typed text query (latency shown, the query in the address), paging, a shared address opened
anew (rendered by the server), an example query, "more like this", the captions of a motion, similar videos, the
.npy download, a video chosen after typing text (the mode follows the file, visibly; the clip shown with its trim
and crop controls; the text searched again when the mode is set back), a motion dropped on the page, previews at
>= 256 px, one column on the phone. Every result list is checked against the JSON API's own query
(``run_query``). Screenshots go to a temporary folder (docs/img/search-page.png with LAVIMO_UPDATE_SCREENSHOTS=1).

One small index (8 clips) shared by every flow; its skeleton previews are rendered once up front, as ``index``'s
preview rendering would, so none is black on first view."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
K = 3


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or (
        "/usr/lib/chromium/chromedriver" if Path("/usr/lib/chromium/chromedriver").is_file() else None)
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A live server over a tiny index, and a headless Chromium; yields a dict (driver, url, r, index, files)."""
    found = _chromium()
    if found is None:
        pytest.skip("headless Chromium not installed (Debian: apt-get install chromium chromium-driver; "
                    "`make sysdeps` does it as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install -e '.[test]')")
    pytest.importorskip("uvicorn")
    from selenium.webdriver.chrome.service import Service

    from lavimo.search.motionfile import motion_features
    from lavimo.search.preview import skeleton_preview
    from lavimo.search.server import create_app
    from tests.fixtures.runs import start_server

    data = _build(tmp_path_factory)
    r, index, root = data["r"], data["index"], data["root"]
    for i in range(len(index)):  # what an indexing-time preview render leaves: no preview is black on first view
        skeleton_preview(motion_features(index, i), index.root, index.keyid(i))
    np.save(root / "query-motion.npy", motion_features(index, 2))
    server, thread, port = start_server(create_app(r, index))
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1000",
              "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(found[1]), options=opts)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    shots = tmp_path_factory.mktemp("screenshots")
    try:
        yield {"driver": driver, "url": f"http://127.0.0.1:{port}", "r": r, "index": index, "shots": shots,
               "video": Path(index.preview_path(0)), "motion": root / "query-motion.npy"}
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(timeout=10)


def _build(tmp_path_factory) -> dict:
    """A tiny shard set with larger frames (so the screenshot shows something), a random tiny model, its index."""
    import torch

    from lavimo.dataset.shards.stream import load_stats
    from lavimo.model import build_model, load_preset, save_checkpoint
    from lavimo.search.index import build_index
    from lavimo.search.model import load, preprocess_record
    from tests.fixtures.tiny_shards import make_tiny_shards

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("browser")
    shards = make_tiny_shards(root / "shards", n_train=2, n_val=0, n_test=8, n_classes=4, frames=(12, 16),
                              size=96, samples_per_shard=8)
    cfg = load_preset("tiny")
    ckpt = save_checkpoint(build_model(cfg), root / "best.safetensors",
                           extra={"preprocess": preprocess_record(cfg, *load_stats(shards))})
    r = load(ckpt)
    index, _ = build_index(r, root / "index", shards=shards, splits=["test"], progress=False)
    return {"r": r, "index": index, "root": root}


# ------------------------------------------------------------------------------------------------ helpers
def _wait(p, action) -> None:
    """Run ``action`` (a search) and wait for the page to finish it; no error shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    d = p["driver"]
    d.execute_script("document.getElementById('results').dataset.done = 'stale'")
    action()
    WebDriverWait(d, 180).until(lambda d: d.find_element(By.ID, "results").get_attribute("data-done") in ("1", "error"))
    assert not d.find_element(By.ID, "error").text, d.find_element(By.ID, "error").text


def _cards(p) -> list[str]:
    from selenium.webdriver.common.by import By

    return [c.get_attribute("data-keyid") for c in p["driver"].find_elements(By.CSS_SELECTOR, "#results .card")]


def _api(p, **kw) -> list[str]:
    from lavimo.search.query import run_query

    return [h["keyid"] for h in run_query(p["r"], p["index"], k=K, **kw)["results"]]


def _shot(p, width: int, name: str) -> Path:
    out = p["shots"] / f"{width}-{name}.png"
    assert p["driver"].save_screenshot(str(out)) and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return out


def _query(p) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(p["driver"].current_url).query).items()}


def _previews_loaded(p) -> None:
    """Every card's preview is a video of >= 256 px that has loaded its first frame (none black, none an upscaled
    small clip)."""
    from selenium.webdriver.support.ui import WebDriverWait

    d = p["driver"]
    js = ("return [...document.querySelectorAll('#results .card video')].map(v => [v.readyState, v.videoWidth])")
    WebDriverWait(d, 120).until(lambda d: all(s >= 2 for s, _ in d.execute_script(js)))
    sizes = d.execute_script(js)
    assert sizes and all(w >= 256 for _, w in sizes), sizes


# ------------------------------------------------------------------------------------------------ the flows
def _text_flows(p, width: int) -> None:
    from selenium.webdriver.common.by import By

    d, index = p["driver"], p["index"]
    d.get(p["url"] + f"/?k={K}")
    caption = index.entry(1).captions[0]
    box = d.find_element(By.ID, "text")
    box.clear()
    box.send_keys(caption)
    _wait(p, lambda: d.find_element(By.ID, "go").click())
    assert _cards(p) == _api(p, text=caption)
    status = d.find_element(By.ID, "status").text
    assert f"{K} results in" in status and " ms" in status, status
    assert _query(p) == {"q": caption, "mode": "text", "k": str(K)}
    _previews_loaded(p)
    shot = _shot(p, width, "text")
    if width == 1280 and os.environ.get("LAVIMO_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(shot, REPO / "docs" / "img" / "search-page.png")
    _wait(p, lambda: d.find_element(By.ID, "next").click())  # paging
    assert _cards(p) == _api(p, text=caption, offset=K) and _query(p)["page"] == "2"
    assert d.find_element(By.CSS_SELECTOR, "#results .card .rank").text == f"#{K + 1}"
    shared = d.current_url
    _wait(p, lambda: d.find_element(By.ID, "prev").click())
    assert _cards(p) == _api(p, text=caption)
    d.get(shared)  # a shared address: the same page 2, rendered by the server
    assert d.find_element(By.ID, "results").get_attribute("data-done") == "1"
    assert _cards(p) == _api(p, text=caption, offset=K)
    assert d.find_element(By.ID, "text").get_attribute("value") == caption
    example = d.find_element(By.CSS_SELECTOR, "#examples .example")
    text = example.text
    _wait(p, example.click)
    assert _cards(p) == _api(p, text=text) and d.find_element(By.ID, "text").get_attribute("value") == text


def _row_flows(p, width: int) -> None:
    from selenium.webdriver.common.by import By

    d, index = p["driver"], p["index"]
    first = d.find_element(By.CSS_SELECTOR, "#results .card")
    key = first.get_attribute("data-keyid")
    row = index.position(key)
    _wait(p, lambda: first.find_element(By.CLASS_NAME, "act-more").click())
    assert _cards(p) == _api(p, row=row) and key not in _cards(p)
    assert d.find_element(By.ID, "heading").text == f"more like {key}"
    assert _query(p) == {"keyid": key, "mode": "more", "k": str(K)}
    _previews_loaded(p)
    _shot(p, width, "more-like-this")
    card = d.find_element(By.CSS_SELECTOR, f'#results .card[data-keyid="{_cards(p)[0]}"]')
    key2 = card.get_attribute("data-keyid")
    _wait(p, lambda: card.find_element(By.CLASS_NAME, "act-captions").click())
    from lavimo.search.query import run_query

    want = [h["caption"] for h in run_query(p["r"], index, row=index.position(key2), against="text", k=K)["results"]]
    assert [c.find_element(By.CLASS_NAME, "cap").text for c in d.find_elements(By.CSS_SELECTOR, "#results .card")] \
        == want
    card = d.find_element(By.CSS_SELECTOR, "#results .card")
    key3 = card.get_attribute("data-keyid")
    _wait(p, lambda: d.get(p["url"] + f"/?keyid={key3}&mode=more&k={K}"))  # back to motions, by address
    card = d.find_element(By.CSS_SELECTOR, "#results .card")
    key4 = card.get_attribute("data-keyid")
    _wait(p, lambda: card.find_element(By.CLASS_NAME, "act-videos").click())  # similar videos (stored latents)
    assert _cards(p) == _api(p, row=index.position(key4), against="video")
    link = d.find_element(By.CSS_SELECTOR, "#results .card .act-npy")
    got = d.execute_async_script("""const done = arguments[1];
        fetch(arguments[0]).then(async r =>
            done([r.status, [...new Uint8Array(await r.arrayBuffer()).slice(0, 6)]]));""",
                                 link.get_attribute("href"))
    assert got == [200, list(b"\x93NUMPY")], got


def _file_flows(p, width: int) -> None:
    from selenium.webdriver.common.by import By

    d = p["driver"]
    d.get(p["url"] + f"/?k={K}")
    d.find_element(By.ID, "text").send_keys("a person walks forward")
    file_input = d.find_element(By.ID, "file")
    d.execute_script("arguments[0].hidden = false", file_input)
    file_input.send_keys(str(p["video"]))
    d.execute_script("arguments[0].hidden = true", file_input)
    # the mode follows the file, on screen: the typed text is not searched in video mode (nor dropped)
    assert d.find_element(By.ID, "mode-video").is_selected() and not d.find_element(By.ID, "text").is_displayed()
    assert d.find_element(By.ID, "clip").is_displayed()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(d, 60).until(lambda d: d.execute_script("return document.getElementById('clip').readyState") >= 1)
    d.find_element(By.ID, "start").send_keys("0.1")
    d.find_element(By.ID, "end").send_keys("0.7")
    d.find_element(By.ID, "crop-on").click()
    size = d.find_element(By.ID, "crop-size")
    size.clear()
    size.send_keys("64")
    assert d.find_element(By.ID, "crop-box").is_displayed()
    _shot(p, width, "video-trim-crop")
    _wait(p, lambda: d.find_element(By.ID, "go").click())
    assert _cards(p) == _api(p, video=p["video"], start=0.1, end=0.7, crop=(0, 0, 64))
    _wait(p, lambda: (d.find_element(By.ID, "mode-text").click(), d.find_element(By.ID, "go").click()))
    assert _cards(p) == _api(p, text="a person walks forward")  # the typed text, searched once its mode is chosen
    # drag and drop: a .npy motion dropped on the drop zone switches to motion mode
    d.find_element(By.ID, "mode-motion").click()
    d.execute_async_script("""const [bytes, done] = arguments; const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array(bytes)], 'dropped.npy'));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,
                                                                          cancelable: true}));
        done(true);""", list(p["motion"].read_bytes()))
    assert d.find_element(By.ID, "mode-motion").is_selected()
    assert d.find_element(By.ID, "file-name").text == "dropped.npy"
    _wait(p, lambda: d.find_element(By.ID, "go").click())
    assert _cards(p) == _api(p, motion=p["motion"])


def _layout(p, width: int) -> None:
    """At 390 px: the viewport is the phone's (no 980 px desktop layout), one column of cards, no sideways
    scrolling; at 1280 px several columns."""
    d = p["driver"]
    d.get(p["url"] + f"/?q=a+person+walks&mode=text&k={K}")
    inner, scroll = d.execute_script("return [window.innerWidth, document.documentElement.scrollWidth]")
    lefts = d.execute_script("return [...document.querySelectorAll('#results .card')]"
                             ".map(c => Math.round(c.getBoundingClientRect().left))")
    assert inner == width and scroll <= width, (inner, scroll)
    if width < 600:
        assert len(set(lefts)) == 1, lefts
    else:
        assert len(set(lefts)) == K, lefts
    _previews_loaded(p)
    _shot(p, width, "layout")


@pytest.mark.slow
@pytest.mark.parametrize("width", [1280, 390])
def test_search_page_flows(page, width):
    d = page["driver"]
    if width < 600:
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": 844,
                                                                 "deviceScaleFactor": 1, "mobile": True})
    else:
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    _text_flows(page, width)
    _row_flows(page, width)
    _file_flows(page, width)
    _layout(page, width)
