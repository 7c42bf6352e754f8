"""The editing panels of the page (issue 16, "The page"), in Chromium against a real ``ddpm
serve`` (the tiny 8 x 8 checkpoint, T = 100, with an API key): an edit with a mask painted by
pointer events, an interpolation strip, variations driven by the t slider. Each result is
compared with the API's answer to the same request, so every field the page sends is checked.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains

from .browser import (
    KEY,
    NEEDS_BROWSER,
    By,
    Keys,
    Select,
    decode_png,
    fill,
    js,
    module_call,
    ready_page,
    wait,
)
from .test_process import serve_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120), NEEDS_BROWSER]


@pytest.fixture(scope="module")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("edit-page") / "serve.log"
    with serve_process(tiny_checkpoint, log, api_keys=KEY, max_batch="8") as (url, _):
        yield url


def srcs(driver: Any, selector: str) -> list[str]:
    return js(driver, f"[...document.querySelectorAll({selector!r})].map((i) => i.src)")


def b64(src: str) -> str:
    return src.split(",", 1)[1]


def stroke(driver: Any, canvas: Any, cells: list[tuple[int, int]], size: int) -> None:
    """A real pointer stroke (press, moves, release) through the centres of mask cells (x, y)."""
    width = canvas.size["width"]
    cell = width / size

    def offset(x: int, y: int) -> tuple[int, int]:  # Selenium's offsets are from the element's centre
        return round((x + 0.5) * cell - width / 2), round((y + 0.5) * cell - width / 2)

    actions = ActionChains(driver).move_to_element_with_offset(canvas, *offset(*cells[0])).click_and_hold()
    for x, y in cells[1:]:
        actions = actions.move_to_element_with_offset(canvas, *offset(x, y))
    actions.release().perform()


def test_edit_with_a_painted_mask_keeps_the_unmasked_pixels(
    browser: Any, server: str, api: httpx.Client, tmp_path: Path
) -> None:
    card = api.get("/v1/model").json()
    size = card["image_size"]
    source = api.post("/generate", json={"seed": 11, "steps": 4, "label": 3}).content
    (tmp_path / "digit.png").write_bytes(source)
    ready_page(browser, server)
    browser.find_element(By.ID, "edit-file").send_keys(str(tmp_path / "digit.png"))
    wait(browser, "!document.getElementById('edit-view').hidden && !document.getElementById('edit-run').disabled",
         errors="edit-errors")
    assert Select(browser.find_element(By.ID, "edit-source")).first_selected_option.text == "File digit.png"
    canvas = browser.find_element(By.ID, "edit-canvas")
    shown = np.array(js(browser, "Array.from(document.getElementById('edit-canvas').getContext('2d')"
                                 f".getImageData(0, 0, {size}, {size}).data)")).reshape(size, size, 4)
    assert np.array_equal(shown[..., 0], decode_png(source))  # the canvas shows the upload, unmasked

    # Row 1 across, then down and back along row 2 to x = 3; then pixel (5, 2) erased again.
    stroke(browser, canvas, [(0, 1), (7, 1), (7, 2), (3, 2)], size)
    browser.find_element(By.ID, "edit-erase").click()
    stroke(browser, canvas, [(5, 2)], size)
    browser.find_element(By.ID, "edit-erase").click()
    expected = np.zeros((size, size), bool)
    expected[1, :] = True
    expected[2, [3, 4, 6, 7]] = True
    assert js(browser, "document.getElementById('edit-canvas').dataset.masked") == str(expected.sum())

    fill(browser, edit_steps="5", edit_n="2", edit_seed="99")
    Select(browser.find_element(By.ID, "edit-label")).select_by_value("3")
    browser.find_element(By.ID, "edit-run").click()
    wait(browser, "document.getElementById('edit').dataset.state === 'done'", errors="edit-errors")
    [sent, mask_src] = srcs(browser, "#edit-inputs img")
    assert np.array_equal(decode_png(mask_src) == 255, expected)  # the mask sent is the one painted
    assert np.array_equal(decode_png(sent), decode_png(source))  # and the image, pixel for pixel
    results = srcs(browser, "#edit-results img")
    assert len(results) == 2 and int(js(browser, "document.getElementById('edit').dataset.events")) > 0
    original = decode_png(source)
    for src in results:
        edited = decode_png(src)
        assert edited.shape == (size, size)
        assert np.array_equal(edited[~expected], original[~expected])  # RePaint: the known part, exactly
    assert any(not np.array_equal(decode_png(s)[expected], original[expected]) for s in results)
    # The API answers the same request with the same images: every field went through.
    body = {"image": b64(sent), "mask": b64(mask_src), "steps": 5, "n": 2, "seed": 99, "label": 3,
            "response_format": "base64"}
    reference = api.post("/v1/edits", json=body).json()
    assert [b64(s) for s in results] == [i["png_base64"] for i in reference["images"]]
    captions = js(browser, "[...document.querySelectorAll('#edit-results figcaption')].map((f) => f.textContent)")
    assert captions == ["#1 · seed 99", "#2 · seed 100"]

    # An image generated on the page is offered too: SDEdit (no mask) of it at strength 0.6.
    fill(browser, n="1", steps="3", seed="5")
    browser.find_element(By.ID, "generate").click()
    wait(browser, "document.body.dataset.run === 'done'")
    generated = srcs(browser, "#results img")[0]
    picker = Select(browser.find_element(By.ID, "edit-source"))
    picker.select_by_value(generated)
    assert picker.first_selected_option.text.startswith("Generated #1 · seed 5")
    browser.find_element(By.ID, "mask-clear").click()
    assert js(browser, "document.getElementById('edit-canvas').dataset.masked") == "0"
    fill(browser, edit_strength="0.6", edit_n="1")
    browser.find_element(By.ID, "edit-run").click()
    wait(browser, "document.getElementById('edit').dataset.state === 'done'", errors="edit-errors")
    assert len(srcs(browser, "#edit-inputs img")) == 1  # no mask sent
    reference = api.post("/v1/edits", json={"image": b64(generated), "strength": 0.6, "steps": 5, "seed": 99,
                                            "label": 3, "response_format": "base64"}).json()
    assert [b64(s) for s in srcs(browser, "#edit-results img")] == [reference["images"][0]["png_base64"]]


def test_interpolation_strip_shows_every_frame(browser: Any, server: str, api: httpx.Client, tmp_path: Path) -> None:
    ready_page(browser, server)
    # Two seeds' samples, encoded to t = 30 with one noise: as many frames as asked, the API's own.
    browser.execute_script("const t = document.getElementById('interp-t'); t.value = 30;"
                           " t.dispatchEvent(new Event('input'));")
    assert js(browser, "document.getElementById('interp-t-out').textContent") == "t = 30 of 100"
    fill(browser, interp_a_seed="3", interp_b_seed="4", interp_frames="5", interp_steps="4", interp_seed="8")
    browser.find_element(By.ID, "interp-run").click()
    wait(browser, "document.getElementById('interp').dataset.state === 'done'", errors="interp-errors")
    frames = srcs(browser, "#interp-strip img")
    assert len(frames) == 5 and js(browser, "document.getElementById('interp-strip').dataset.frames") == "5"
    reference = api.post("/v1/interpolations", json={
        "a": {"seed": 3}, "b": {"seed": 4}, "t": 30, "frames": 5, "steps": 4, "seed": 8, "label": None,
        "response_format": "base64"}).json()
    assert [b64(f) for f in frames] == [i["png_base64"] for i in reference["images"]]
    labels = js(browser, "[...document.querySelectorAll('#interp-strip span')].map((s) => s.textContent)")
    assert labels == ["λ=0.00", "λ=0.25", "λ=0.50", "λ=0.75", "λ=1.00"]

    # Two images from files at t = 0: nothing runs, the frames are the exact blend, ends included.
    ends = []
    for name, value in (("a", 40), ("b", 200)):
        pixels = np.full((8, 8), value, np.uint8)
        pixels[name == "a"::2] = 255 - value  # striped, so a wrong orientation would show
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (tmp_path / f"{name}.png").write_bytes(buffer.getvalue())
        browser.find_element(By.ID, f"interp-{name}-file").send_keys(str(tmp_path / f"{name}.png"))
        wait(browser, f"document.getElementById('interp-{name}').value === 'upload:0'")
        ends.append(pixels)
    assert js(browser, "document.getElementById('interp-a-seed').disabled") is True
    browser.find_element(By.ID, "interp-t").send_keys(Keys.HOME)
    fill(browser, interp_frames="3")
    browser.find_element(By.ID, "interp-run").click()
    wait(browser, "document.getElementById('interp').dataset.state === 'done'"
                  " && document.getElementById('interp-strip').dataset.t === '0'", errors="interp-errors")
    frames = [decode_png(s) for s in srcs(browser, "#interp-strip img")]
    assert len(frames) == 3
    assert np.array_equal(frames[0], ends[0]) and np.array_equal(frames[2], ends[1])
    assert np.abs(frames[1].astype(int) - (ends[0].astype(int) + ends[1]) / 2).max() <= 1


def test_variations_slider_sets_t(browser: Any, server: str, api: httpx.Client) -> None:
    ready_page(browser, server)
    # Every request body the page sends, recorded in the page.
    browser.execute_script("""window.sent = []; const original = window.fetch;
        window.fetch = (url, init) => { if (String(url).includes('variations')) window.sent.push(init.body);
                                        return original(url, init); };""")
    fill(browser, var_seed="21", var_n="3", var_steps="5")
    slider = browser.find_element(By.ID, "var-t")
    rows: dict[int, list[str]] = {}
    for key, t in ((Keys.HOME, 0), (Keys.END, 100), (Keys.PAGE_DOWN, 90)):
        slider.send_keys(key)  # a key on the slider changes t and runs it
        wait(browser, f"document.querySelector('#var-rows figure[data-t=\"{t}\"][data-done]')", errors="var-errors")
        wait(browser, "document.getElementById('var').dataset.state === 'done'", errors="var-errors")
        rows[t] = srcs(browser, f"#var-rows figure[data-t='{t}'] img")
        assert js(browser, "document.getElementById('var-t-out').textContent").startswith(f"t = {t} of 100")
    sent = [json.loads(b) for b in js(browser, "window.sent")]
    assert [s["t"] for s in sent] == [0, 100, 90] and {s["seed"] for s in sent} == {21}
    order = js(browser, "[...document.querySelectorAll('#var-rows figure')].map((f) => Number(f.dataset.t))")
    assert order == [0, 90, 100]  # rows in order of t, whatever the order they ran in
    for t, images in rows.items():
        reference = api.post("/v1/variations", json={"t": t, "seed": 21, "n": 3, "steps": 5, "sampler": "ddpm",
                                                     "label": None, "response_format": "base64"}).json()
        assert [b64(s) for s in images] == [i["png_base64"] for i in reference["images"]], t
    assert len(set(rows[0])) == 1  # t = 0 shares the whole chain: one sample, three times
    assert len(set(rows[100])) == 3  # t = T shares only x_T

    # DDIM with eta = 0 draws no noise: the server refuses it by name, the panel says so.
    Select(browser.find_element(By.ID, "var-sampler")).select_by_value("ddim")
    browser.find_element(By.ID, "var-run").click()
    wait(browser, "document.getElementById('var').dataset.state === 'failed'", errors="var-errors")
    refused = api.post("/v1/variations", json={"t": 90, "seed": 21, "sampler": "ddim"})
    assert refused.status_code == 422
    shown = js(browser, "document.getElementById('var-errors').innerText")
    assert "HTTP 422" in shown and refused.json()["detail"][0]["msg"] in shown and "sampler" in shown


def test_png_encoder_and_exact_seeds_in_bodies(browser: Any, server: str) -> None:
    """The page's own PNG writer, read back by Pillow (grey and RGB, odd sizes), and seeds past
    2^53 written exactly wherever they sit in a body."""
    browser.get(server + "/")
    rng = np.random.default_rng(3)
    for shape in ((3, 5), (7, 2, 3), (1, 1)):
        pixels = rng.integers(0, 256, shape, dtype=np.uint8)
        height, width = shape[:2]
        channels = 1 if len(shape) == 2 else 3
        encoded = module_call(browser, "png.js", "m.encodePng(args[0], args[1], args[2], new Uint8Array(args[3]))"
                              ".then((bytes) => m.base64(bytes))", width, height, channels, pixels.ravel().tolist())
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert image.mode == ("L" if channels == 1 else "RGB") and image.size == (width, height)
        assert np.array_equal(np.asarray(image), pixels)
    # Grey from RGB as Pillow converts it, exactly (so an upload's grey pixels keep their values).
    rgb = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.full((4, 4, 1), 255, np.uint8)], axis=2)
    grey = module_call(browser, "png.js",
                       "Array.from(m.modelPixels(new ImageData(new Uint8ClampedArray(args[0]), 4, 4), 1))",
                       rgba.ravel().tolist())
    assert grey == np.asarray(Image.fromarray(rgb).convert("L")).ravel().tolist()
    body = module_call(browser, "api.js",
                       "m.bigJson({a: {seed: BigInt(args[0])}, b: {image: 'AA=='}, t: 3, seed: args[0]})",
                       str(2**63 - 1))
    assert body == f'{{"a":{{"seed":{2**63 - 1}}},"b":{{"image":"AA=="}},"t":3,"seed":{2**63 - 1}}}'
