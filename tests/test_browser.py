"""The web page at ``GET /``, in a real browser: Debian's Chromium driven by Selenium, against a
real ``ddpm serve`` on loopback (the tiny checkpoint, with an API key so the 401 path runs too).

``DDPM_PAGE_SCREENSHOT=docs/images/page.png pytest tests/test_browser.py`` also writes the final
screenshot there (that is how the committed one is made); ``DDPM_BROWSER_CHECKPOINT`` serves
another checkpoint instead of the tiny one.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageSequence

from app.docs_assets import install_offline_docs

from .browser import (
    AUTH,
    KEY,
    MISSING,
    By,
    Keys,
    Select,
    chromium,
    decode_data_url,
    js,
    module_call,
    ready_page,
    severe_console,
    wait,
)
from .live import live_app
from .test_process import serve_process

# The remedies in the reason become the run's closing line (tests/skipsummary.py); the other
# browser suites share this mark as tests.browser.NEEDS_BROWSER.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(bool(MISSING), reason="no browser to test the page in: missing chromium "
                       "(apt-get install chromium) or chromedriver (apt-get install chromium-driver), "
                       f"or selenium (pip install -e '.[test]'): {', '.join(MISSING)}"),
]

SEED = 2**53 - 16  # the largest seed the server takes: room for n = 16 below 2^53


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    checkpoint = Path(os.environ.get("DDPM_BROWSER_CHECKPOINT") or tiny_checkpoint)
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serve_process(checkpoint, log, api_keys=KEY, max_batch="8") as (url, _):
        yield url


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory, downloads: Path) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium-profile"), downloads) as driver:
        yield driver


def wait_file(folder: Path, pattern: str, timeout: float = 10.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in folder.glob(pattern) if not p.name.endswith(".crdownload")]
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no download matching {pattern} in {sorted(p.name for p in folder.iterdir())}")


def test_gif_encoder_output_decodes_with_pillow(browser: Any, server: str) -> None:
    """The page's own GIF89a encoder, run in the browser, read back by an independent decoder."""
    browser.get(server + "/")
    # Frame 1 is noise over 256 colours, big enough that the LZW table fills and is reset;
    # frame 2 is a gradient. The palette has 256 entries whose RGB encodes the index.
    width, height = 96, 80
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, width * height), np.arange(width * height) % 251]
    palette = np.stack([np.arange(256), 255 - np.arange(256), (np.arange(256) * 7) % 256], axis=1)
    encode = ("btoa(String.fromCharCode(...m.encodeGif({width: args[0], height: args[1],"
              " palette: new Uint8Array(args[2]), frames: args[3].map((f) => new Uint8Array(f)), delays: args[4]})))")
    encoded = module_call(browser, "gif.js", encode, width, height, palette.ravel().tolist(),
                          [f.tolist() for f in frames], [7, 150])
    gif = Image.open(io.BytesIO(base64.b64decode(encoded)))
    assert gif.format == "GIF" and gif.size == (width, height) and gif.info["loop"] == 0
    decoded = [(np.asarray(f.convert("RGB")), f.info["duration"]) for f in ImageSequence.Iterator(gif)]
    assert [d for _, d in decoded] == [70, 1500]
    for (rgb, _), indices in zip(decoded, frames, strict=True):
        assert np.array_equal(rgb.reshape(-1, 3), palette[indices])
    # A 3-colour palette is padded to 4 entries, with 2-bit LZW codes: the smallest case.
    small = module_call(browser, "gif.js", encode, 3, 2, [255, 0, 0, 0, 255, 0, 0, 0, 255], [[0, 1, 2, 2, 1, 0]], [10])
    tiny = np.asarray(Image.open(io.BytesIO(base64.b64decode(small))).convert("RGB"))
    assert tiny[0].tolist() == [[255, 0, 0], [0, 255, 0], [0, 0, 255]] and tiny[1, 0].tolist() == [0, 0, 255]


def test_sse_parser_splits_events_wherever_the_chunks_break(browser: Any, server: str) -> None:
    """The stream's bytes arrive in arbitrary pieces: every split of the same text parses alike."""
    browser.get(server + "/")
    text = ('event: queued\r\ndata: {"position":0}\r\n\r\n: keep-alive\n\n'
            'event: progress\ndata: {"step":1,\ndata: "steps":2}\n\n'
            'data:{"plain":true}\r\r'
            'event: done\ndata: {"ok":1}\n\n'
            'event: cut\ndata: {"never":"finished"}\n')
    parsed = module_call(browser, "sse.js", """(() => {
        const text = args[0], runs = [];
        for (let cut = 0; cut <= text.length; cut++) {
          const p = new m.SSEParser();
          runs.push(JSON.stringify([...p.feed(text.slice(0, cut)), ...p.feed(text.slice(cut))]));
        }
        const bytes = new m.SSEParser();  // one character at a time
        runs.push(JSON.stringify([...text].flatMap((c) => bytes.feed(c))));
        return runs; })()""", text)
    assert len(set(parsed)) == 1
    assert json.loads(parsed[0]) == [
        {"event": "queued", "data": '{"position":0}'},
        {"event": "progress", "data": '{"step":1,\n"steps":2}'},  # data lines join with a newline
        {"event": "message", "data": '{"plain":true}'},  # no event field; CR alone ends lines too
        {"event": "done", "data": '{"ok":1}'},
    ]  # and the last event, never ended by a blank line, is not delivered


def test_page_generates_shows_both_chains_and_server_errors(
    browser: Any, server: str, downloads: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    api = httpx.Client(base_url=server, headers=AUTH, timeout=30)
    card = api.get("/v1/model").json()
    size, limits = card["image_size"], card["limits"]

    def by_id(element_id: str) -> Any:
        return browser.find_element(By.ID, element_id)

    # 1. /v1/model answers 401 without the key: the page asks for one, and the key (typed, Enter) works.
    browser.get(server + "/")
    wait(browser, "document.body.dataset.state === 'auth'")
    assert by_id("auth-form").is_displayed()
    assert "missing or invalid API key" in by_id("errors").text and "401" in by_id("errors").text
    by_id("api-key").send_keys(KEY, Keys.ENTER)
    wait(browser, "document.body.dataset.state === 'ready'")
    assert by_id("errors").text == ""

    # The form's bounds and choices come from the model card.
    assert by_id("steps").get_attribute("max") == str(limits["max_steps"])
    assert by_id("n").get_attribute("max") == str(limits["max_images_per_request"])
    assert by_id("steps").get_attribute("value") == str(card["defaults"]["steps"])
    labels = [o.text for o in Select(by_id("label")).options]
    assert len(labels) == card["num_classes"] + 1 and labels[0].startswith("none")
    assert [o.get_attribute("value") for o in Select(by_id("sampler")).options] == card["samplers"]
    # Every control has a label.
    assert js(browser, "[...document.querySelectorAll('input, select')].filter((e) => !e.labels.length)"
                       ".map((e) => e.id)") == []

    # 2. Bounds broken on purpose (the browser's own checks switched off): the server's 422
    #    messages, each of them, word for word.
    browser.execute_script("document.getElementById('generate-form').noValidate = true;"
                           "document.getElementById('steps').value = arguments[0];"
                           "document.getElementById('guidance').value = arguments[1];",
                           limits["max_steps"] + 1, int(limits["max_guidance"]) + 1)
    by_id("generate").click()
    wait(browser, "document.body.dataset.run === 'failed'")
    too_far = {"steps": limits["max_steps"] + 1, "guidance": int(limits["max_guidance"]) + 1}
    expected = api.post("/generate", json=too_far)
    assert expected.status_code == 422
    messages = [e["msg"] for e in expected.json()["detail"]]
    assert len(messages) == 2 and any("steps" in m for m in messages) and any("guidance" in m for m in messages)
    assert [li.text for li in by_id("errors").find_elements(By.TAG_NAME, "li")] == messages
    assert by_id("errors").get_attribute("data-status") == "422" and "HTTP 422" in by_id("errors").text

    # 3. A valid request, submitted from the keyboard: two images of class 3. The seeds are the
    #    largest two, past 2^53, where a JavaScript number would silently round them.
    browser.execute_script("document.getElementById('generate-form').noValidate = false;")
    for element_id, value in (("n", "2"), ("steps", "10"), ("guidance", str(card["defaults"]["guidance"]))):
        by_id(element_id).clear()
        by_id(element_id).send_keys(value)
    Select(by_id("label")).select_by_value("3")
    by_id("seed").send_keys(str(SEED), Keys.ENTER)
    wait(browser, "document.body.dataset.run === 'done'")
    assert by_id("errors").text == ""
    progress_events = int(by_id("progress-box").get_attribute("data-events"))
    assert progress_events > 0
    assert re.fullmatch(r"Step \d+ of 10 · \d of 2 images done", by_id("progress-box").get_attribute("data-step-text"))
    assert by_id("status").text.startswith("Done: 2 images")

    # 4. Same seed, more steps: a second stream, the steps doubled, the seed kept.
    more = by_id("more-steps")
    assert more.is_enabled() and more.text == "Same seed, 20 steps"
    more.click()  # the click starts the run before it returns: 'done' below is the new run's
    wait(browser, "document.body.dataset.run === 'done'")
    assert by_id("steps").get_attribute("value") == "20" and by_id("seed").get_attribute("value") == str(SEED)
    assert re.fullmatch(r"Step \d+ of 20.*", by_id("progress-box").get_attribute("data-step-text"))

    # The images: decoded by the browser at the model's size, exactly the server's images for
    # the same request (so every field went through), with their seeds in the alt text.
    images = js(browser, "[...document.querySelectorAll('#results img')].map((i) => "
                         "({w: i.naturalWidth, h: i.naturalHeight, alt: i.alt, src: i.src}))")
    assert [(i["w"], i["h"]) for i in images] == [(size, size)] * 2
    assert f"seed {SEED}," in images[0]["alt"] and f"seed {SEED + 1}," in images[1]["alt"]
    assert "class 3" in images[0]["alt"]
    reference = api.post("/generate", json={"n": 2, "steps": 20, "seed": SEED, "label": 3,
                                            "response_format": "base64"}).json()
    assert [i["src"].split(",", 1)[1] for i in images] == [r["png_base64"] for r in reference["images"]]

    # 5. The denoising chain: x0 predictions from the stream, then the final sample.
    frames = js(browser, "[...document.querySelectorAll('figure.chain')].map((f) => "
                         "[...f.querySelectorAll('img')].map((i) => [i.naturalWidth, i.src]))")
    labels = js(browser, "[...document.querySelectorAll('figure.chain')].map((f) => "
                         "[...f.querySelectorAll('li span')].map((s) => s.textContent))")
    assert len(frames) == len(labels) == 2
    for chain, names, final in zip(frames, labels, images, strict=True):
        assert len(chain) == len(names) >= 4 and all(w == size for w, _ in chain)
        assert chain[-1][1] == final["src"] and names[-1] == "final"
        steps = [int(name.removeprefix("step ")) for name in names[:-1]]
        assert steps == sorted(set(steps)) and steps[0] > 0 and steps[-1] < 20  # in order, from the stream

    # Saved as a GIF (the page's encoder) and as a PNG strip, read back by Pillow.
    chain0 = browser.find_element(By.CSS_SELECTOR, "figure.chain[data-index='0']")
    chain0.find_element(By.XPATH, ".//button[.='Save as GIF']").click()
    gif: Any = Image.open(wait_file(downloads, f"ddpm-chain-seed-{SEED}.gif"))
    scale = max(1, 128 // size)
    assert gif.n_frames == len(frames[0]) and gif.size == (size * scale, size * scale)
    gif.seek(gif.n_frames - 1)
    last = np.asarray(gif.convert("L"))[::scale, ::scale]
    assert np.array_equal(last, decode_data_url(images[0]["src"]))
    chain0.find_element(By.XPATH, ".//button[.='Save as PNG strip']").click()
    strip = Image.open(wait_file(downloads, f"ddpm-chain-seed-{SEED}.png"))
    small = max(1, 64 // size)
    assert strip.size == (len(frames[0]) * size * small + (len(frames[0]) - 1) * 2, size * small)

    # 6. The forward process, driven from the keyboard: at t = 0 the canvas is x_0 itself; at
    #    t = T it is sqrt(abar_T) x_0 + sqrt(1 - abar_T) eps with the page's seeded noise.
    assert by_id("forward-view").is_displayed()
    assert len(Select(by_id("forward-source")).options) == 2
    schedule = api.get("/v1/schedule").json()
    T, abar = schedule["timesteps"], schedule["alphas_cumprod"]
    canvas_pixels = ("(() => { const c = document.getElementById('forward-canvas');"
                     " return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); })()")
    slider = by_id("forward-t")
    slider.send_keys(Keys.HOME)
    wait(browser, "document.getElementById('forward-view').dataset.t === '0'", timeout=5)
    x0 = decode_data_url(images[0]["src"]).astype(float)
    at0 = np.array(js(browser, canvas_pixels)).reshape(size, size, 4)
    assert np.array_equal(at0[..., 0], x0) and np.array_equal(at0[..., 0], at0[..., 2])
    slider.send_keys(Keys.END)
    wait(browser, f"document.getElementById('forward-view').dataset.t === '{T}'", timeout=5)
    eps = np.array(module_call(browser, "forward.js", f"Array.from(m.gaussianNoise(0, {size * size}))"))
    xt = np.sqrt(abar[-1]) * (x0 / 127.5 - 1) + np.sqrt(1 - abar[-1]) * eps.reshape(size, size)
    expected_xt = np.clip(np.round((xt + 1) * 127.5), 0, 255)
    at_t = np.array(js(browser, canvas_pixels)).reshape(size, size, 4)[..., 0]
    assert np.abs(at_t - expected_xt).max() <= 1  # rounding of .5 may differ
    assert np.abs(at_t - x0).mean() > 20  # and that is far from the image
    assert f"t = {T} of {T}" in by_id("forward-caption").text
    # The noise: reproducible per seed, different across seeds, standard normal.
    stats = module_call(browser, "forward.js", (
        "(() => { const a = m.gaussianNoise(7, 20000), b = m.gaussianNoise(7, 20000), c = m.gaussianNoise(8, 4);"
        " const mean = a.reduce((s, v) => s + v, 0) / a.length;"
        " const sd = Math.sqrt(a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length);"
        " return {same: a.every((v, i) => v === b[i]), differs: c[0] !== a[0], mean, sd}; })()"))
    assert stats["same"] and stats["differs"] and abs(stats["mean"]) < 0.03 and abs(stats["sd"] - 1) < 0.03
    strip_labels = js(browser, "[...document.querySelectorAll('#forward-strip canvas')]"
                               ".map((c) => c.getAttribute('aria-label'))")
    assert len(strip_labels) == 8 and strip_labels[0].startswith("x_t at t = 0,") and f"t = {T}," in strip_labels[-1]
    by_id("forward-t").send_keys(*[Keys.LEFT] * round(0.75 * T))  # back to about T/4, for the screenshot
    wait(browser, f"document.getElementById('forward-view').dataset.t === '{T - round(0.75 * T)}'", timeout=10)

    # Every image on the page says what it shows, and no script failed along the way (the
    # browser logs the 401 and 422 answers as failed loads: those were meant).
    assert js(browser, "[...document.querySelectorAll('img')].filter((i) => !i.alt).length") == 0
    assert severe_console(browser) == []
    assert time.monotonic() - started < 60

    shot = base64.b64decode(browser.execute_cdp_cmd("Page.captureScreenshot",
                                                    {"format": "png", "captureBeyondViewport": True})["data"])
    (tmp_path / "page.png").write_bytes(shot)
    if target := os.environ.get("DDPM_PAGE_SCREENSHOT"):
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        Path(target).write_bytes(shot)


@pytest.fixture(scope="module")
def docs_server(tiny_checkpoint: Path) -> Iterator[str]:
    """The app with its documentation pages made offline (a no-op where create_app already did)."""
    with live_app(tiny_checkpoint) as (url, app):
        install_offline_docs(app)
        yield url


def loaded_from(driver: Any) -> list[str]:
    """Every URL the page loaded or tried to: the document and each resource."""
    return js(driver, "[location.href, ...performance.getEntriesByType('resource').map((e) => e.name)]")


@pytest.mark.parametrize(("page", "rendered"), [
    # Swagger UI: one block per operation, each with its method and path.
    ("/docs", "[...document.querySelectorAll('.opblock .opblock-summary-path')].map((e) => e.innerText)"),
    # ReDoc: the operations in its menu, by summary.
    ("/redoc", "[...document.querySelectorAll('[role=menuitem], li[data-item-id] label')].map((e) => e.innerText)"),
])
def test_api_docs_render_with_no_internet(browser: Any, docs_server: str, page: str, rendered: str) -> None:
    # Record what the page's Content-Security-Policy refuses, from before its first script runs.
    watch = browser.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": (
        "window.refused = []; document.addEventListener('securitypolicyviolation',"
        " (e) => window.refused.push(e.blockedURI), true);")})
    try:
        browser.get(docs_server + page)
    finally:
        browser.execute_cdp_cmd("Page.removeScriptToEvaluateOnNewDocument", {"identifier": watch["identifier"]})
    schema = httpx.get(docs_server + "/openapi.json").json()
    wait(browser, f"{rendered}.length >= {len(schema['paths'])}")
    text = "\n".join(js(browser, rendered))
    if page == "/docs":
        for path in schema["paths"]:
            assert path in text.split("\n"), (path, text)
        # An operation opens and shows its request body's fields, drawn from the schema.
        browser.find_element(By.CSS_SELECTOR, "#operations-default-generate_generate_post button").click()
        wait(browser, "document.querySelector('#operations-default-generate_generate_post .opblock-body')"
                      "?.innerText.includes('response_format')")
    else:
        assert "Generate images" in text and "Model card and limits" in text, text
        assert "/generate" in js(browser, "document.body.innerText")
    # Anything the bundled scripts name elsewhere (ReDoc's Redocly logo) was refused by the page's
    # policy inside the browser: no request left for another host.
    outside = [u for u in loaded_from(browser) if not u.startswith(docs_server + "/")]
    assert sorted(outside) == sorted(js(browser, "window.refused")), outside


def test_class_options_name_each_class_once(browser: Any, server: str) -> None:
    ready_page(browser, server)
    # The tiny model's classes are named "0".."9": each option says it once, not "7: 7".
    options = [o.text for o in Select(browser.find_element(By.ID, "label")).options]
    assert options == ["none (unconditional)", *[str(i) for i in range(10)]]
    # Other names and aliases (the model card's class_aliases, per class or by name).
    cases = module_call(browser, "labels.js", """[
        m.classOption(7, '7'), m.classOption(3, 'cat'), m.classOption(3, undefined),
        m.classOption(7, '7', ['seven', '7']), m.classOption(0, 'airplane', ['plane', 'aeroplane']),
        m.aliasesOf({class_names: ['a', 'b'], class_aliases: [['x'], 'y']}, 1),
        m.aliasesOf({class_names: ['a', 'b'], class_aliases: {b: ['z', 'w']}}, 1),
        m.aliasesOf({class_names: ['a', 'b'], class_aliases: {'0': 'q'}}, 0),
        m.aliasesOf({class_names: ['a', 'b']}, 0)]""")
    assert cases == ["7", "3: cat", "3", "7 (seven)", "0: airplane (plane, aeroplane)", ["y"], ["z", "w"], ["q"], []]


def test_the_page_names_both_apis(browser: Any, server: str) -> None:
    ready_page(browser, server)
    text = browser.find_element(By.ID, "apis").text
    for path in ("POST /generate", "/v1/jobs", "/v1/edits", "POST /v1/images/generations", "GET /v1/models"):
        assert path in text, path
    assert "openai" in text and "base_url" in text


def test_status_follows_the_run_and_long_seeds_keep_the_grid(browser: Any, server: str) -> None:
    """While sampling runs the status says so (not "Queued with 0 images ahead"); four images
    with 19-digit seeds stay one row of equal cells, no button wider than its cell."""
    ready_page(browser, server)
    # The status text at every progress event, recorded by the page itself as the events arrive.
    browser.execute_script("""
        window.statusAtProgress = [];
        new MutationObserver(() => window.statusAtProgress.push(document.getElementById('status').textContent))
          .observe(document.getElementById('progress-box'), {attributes: true, attributeFilter: ['data-events']});""")
    for element_id, value in (("n", "4"), ("steps", "40"), ("preview-every", "0")):
        browser.find_element(By.ID, element_id).clear()
        browser.find_element(By.ID, element_id).send_keys(value)
    seed = browser.find_element(By.ID, "seed")
    seed.clear()
    seed.send_keys(str(2**53 - 16), Keys.ENTER)  # the largest seed the server takes: as long as a drawn seed gets
    wait(browser, "document.body.dataset.run === 'done'")
    seen = js(browser, "window.statusAtProgress")
    assert seen and not any("Queued" in s for s in seen), seen
    assert any(s.startswith("Sampling 4 images") for s in seen), seen
    assert browser.find_element(By.ID, "status").text.startswith("Done: 4 images")

    cells = js(browser, """[...document.querySelectorAll('#results > li')].map((li) => {
        const r = li.getBoundingClientRect(), img = li.querySelector('img').getBoundingClientRect();
        const over = [...li.querySelectorAll('button, a, figcaption')]
          .filter((b) => b.scrollWidth > b.clientWidth + 1 || b.getBoundingClientRect().right > r.right + 1);
        return {top: Math.round(r.top), width: r.width, image: img.width, overflowing: over.length};
    })""")
    assert len(cells) == 4
    assert len({c["top"] for c in cells}) == 1, cells  # one row, not three columns and a straggler
    assert len({round(c["width"]) for c in cells}) == 1 and all(c["overflowing"] == 0 for c in cells), cells
    assert all(c["width"] <= max(2 * c["image"], 200) for c in cells), cells  # the seed does not set the width
    # Each cell still names its full seed: in the caption, and in its button's accessible name.
    captions = js(browser, "[...document.querySelectorAll('#results figcaption')].map((f) => f.textContent)")
    assert captions == [f"#{i + 1} · seed {2**53 - 16 + i}" for i in range(4)]
    assert js(browser, "[...document.querySelectorAll('#results button')].map((b) => b.getAttribute('aria-label'))"
                       ".filter(Boolean)") == [f"Reuse seed {2**53 - 16 + i}" for i in range(4)]
    # The same holds for a seed the server draws.
    seed.clear()
    browser.find_element(By.ID, "generate").click()
    wait(browser, "document.body.dataset.run === 'done'")
    drawn = js(browser, "[...document.querySelectorAll('#results > li')].map((li) => li.dataset.seed)")
    widths = js(browser, "[...document.querySelectorAll('#results > li')]"
                         ".map((li) => li.getBoundingClientRect().width)")
    assert len(drawn) == 4 and len(set(widths)) == 1 and widths[0] == cells[0]["width"], (drawn, widths)


def test_readme_javascript_example_runs_on_the_page(browser: Any, docs_server: str) -> None:
    """The README's browser example, as written, in the page's context (a server without keys)."""
    from .test_readme import readme_blocks

    [example] = readme_blocks("js")
    browser.get(docs_server + "/")
    wait(browser, "document.body.dataset.state === 'ready'")
    before = js(browser, "document.images.length")
    error = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"(async () => {{ {example} }})().then(() => done(null), (e) => done(String(e)));")
    assert error is None
    wait(browser, f"document.images.length === {before + 1} && document.images[{before}].complete", timeout=10)
    image = js(browser, f"(() => {{ const i = document.images[{before}];"
                        " return {src: i.src, w: i.naturalWidth, h: i.naturalHeight}; })()")
    size = httpx.get(docs_server + "/v1/model").json()["image_size"]
    assert image["src"].startswith("blob:") and (image["w"], image["h"]) == (size, size)
    # And the error branch's shape, as its comment shows it.
    detail = browser.execute_async_script("""const done = arguments[arguments.length - 1];
        fetch('/generate', {method: 'POST', headers: {'content-type': 'application/json'},
                            body: JSON.stringify({label: 2, steps: 1e9})})
          .then((r) => r.json()).then((b) => done(b.detail));""")
    assert detail[0]["field"] == "steps" and detail[0]["msg"].startswith("steps: Input should be")
