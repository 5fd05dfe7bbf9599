"""Real-browser test of the web page's box-prompt tool: headless Debian Chromium (Playwright,
system binary) against a real uvicorn on 127.0.0.1 serving a tiny randomly initialised SAM
(``tiny_sam`` from conftest.py). Skips when chromium or playwright is missing; fails when
chromium is installed but does not start.

The box is drawn by a real mouse drag on an image shown smaller than its size (and the canvas
itself shrunk by CSS), so the page must map CSS pixels -> canvas pixels -> image pixels. Checked:
the box the page sends is in image pixels, and the mask it shows (decoded and as drawn on the
canvas) is the API's mask for the same image and box.

docs/serve_box.png is rewritten only on request, so a test run never modifies tracked files:
    HRMEDSEG_UPDATE_DOCS=1 python -m pytest tests/serve/test_browser_box.py
"""
import base64
import email.parser
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ._live import CHROMIUM, DOCS, launch_chromium, live_server

if not os.path.exists(CHROMIUM):
    pytest.skip("chromium not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

W, H = 1600, 1200                       # the test image: larger than the page can show
TARGET = (420, 310, 1210, 905)          # the box to draw, in image pixels
FG = (230, 25, 75)                      # class_palette(2)[1], the overlay colour of class 1

# Uint8Array / canvas pixels -> base64 (a 1600x1200 mask as a JSON array would be slow)
B64 = """(a) => { let s = ""; for (let i = 0; i < a.length; i += 0x8000)
    s += String.fromCharCode.apply(null, a.subarray(i, i + 0x8000)); return btoa(s); }"""
READ_MASK = f"() => ({B64})(window.hrmedseg.readMask())"
READ_VIEW = f"""() => {{ const c = document.getElementById('view');
    return ({B64})(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }}"""


def _b64(page, js: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(page.evaluate(js)), np.uint8)


def _js_round(v: float) -> int:
    return int(np.floor(v + 0.5))       # Math.round


class _Recorder:
    """ASGI wrapper that keeps (content-type, body) of every POST /v1/segment, as the server got it
    (Chromium does not expose FormData file bodies to Playwright's request objects)."""

    def __init__(self, app) -> None:
        self.app, self.seen = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != "/v1/segment":
            return await self.app(scope, receive, send)
        chunks = []

        async def receive_and_keep():
            msg = await receive()
            if msg["type"] == "http.request":
                chunks.append(msg.get("body", b""))
            return msg
        try:
            await self.app(scope, receive_and_keep, send)
        finally:
            self.seen.append((dict(scope["headers"]).get(b"content-type", b"").decode(), b"".join(chunks)))


@pytest.fixture(scope="module")
def box_server(tiny_sam):
    from hrmedseg.serve.app import create_app
    app = _Recorder(create_app({"tiny_sam": tiny_sam}, device="cpu", max_pixels=10_000_000))
    with live_server(app) as url:
        yield url, app.seen


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = launch_chromium(p)
        try:
            yield b
        finally:
            b.close()


def _open(browser, server, path: Path, viewport=(1280, 820)):
    server, _ = server
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.goto(server + "/")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0", timeout=20000)
    assert page.is_visible("#box-tools")
    page.set_input_files("#file", str(path))
    page.wait_for_function("['ready', 'error'].includes(window.hrmedseg.state)", timeout=20000)
    assert page.evaluate("window.hrmedseg.state") == "ready", page.inner_text("#status")
    return page


def _drag(page, box_client):
    x0, y0, x1, y1 = box_client
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
    page.mouse.move(x1, y1, steps=4)
    page.mouse.up()


def _segment(page, server):
    """Press Segment; return the fields of the multipart request the page sent: {name: bytes}."""
    _, seen = server
    n = len(seen)
    page.click("#run")
    page.wait_for_function("['done', 'error'].includes(window.hrmedseg.state)", timeout=20000)
    assert page.evaluate("window.hrmedseg.state") == "done", page.inner_text("#status")
    assert len(seen) == n + 1
    ctype, body = seen[n]
    assert ctype.startswith("multipart/form-data")
    msg = email.parser.BytesParser().parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in msg.get_payload()}


def test_box_drawn_on_downscaled_preview(box_server, browser, tiny_sam, tmp_path):
    yy, xx = np.mgrid[:H, :W]
    img = np.empty((H, W, 3), np.uint8)
    img[:] = (0, 60, 90)
    img[..., 0] = (40 + yy // 40).astype(np.uint8)        # a vertical gradient behind an ellipse
    inside = ((xx - 820) / 380.0) ** 2 + ((yy - 600) / 280.0) ** 2 < 1
    img[inside] = (120, 200, 230)
    src = tmp_path / "scan.png"
    Image.fromarray(img).save(src)
    data = src.read_bytes()

    page = _open(browser, box_server, src)
    assert page.get_attribute("#view", "data-image-width") == str(W)
    assert page.get_attribute("#view", "data-image-height") == str(H)
    cw, ch = page.evaluate("[document.getElementById('view').width, document.getElementById('view').height]")
    assert cw < 0.7 * W and ch < 0.7 * H, (cw, ch)          # the preview is downscaled ...
    page.set_viewport_size({"width": 960, "height": 820})  # ... and the canvas shrunk by CSS too
    r = page.locator("#view").bounding_box()
    assert r["width"] < cw - 50, (r, cw)
    assert abs(r["width"] / r["height"] - cw / ch) < 0.01, "canvas shown with a distorted aspect ratio"

    # drag from whole CSS pixels; what the page must compute from them (image pixels)
    client = [round(r["x"] + TARGET[0] * r["width"] / W), round(r["y"] + TARGET[1] * r["height"] / H),
              round(r["x"] + TARGET[2] * r["width"] / W), round(r["y"] + TARGET[3] * r["height"] / H)]
    want = [(client[0] - r["x"]) * W / r["width"], (client[1] - r["y"]) * H / r["height"],
            (client[2] - r["x"]) * W / r["width"], (client[3] - r["y"]) * H / r["height"]]
    _drag(page, client)
    boxes = page.evaluate("window.hrmedseg.boxes()")
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0], want, atol=1e-3)
    one_css_px = W / r["width"]                              # ~3 image pixels here
    assert np.abs(np.subtract(boxes[0], TARGET)).max() <= one_css_px

    page.set_viewport_size({"width": 1280, "height": 820})
    fields = _segment(page, box_server)
    sent = json.loads(fields["boxes"])
    assert sent == [[_js_round(v) for v in want]]            # image pixels, whole numbers
    assert fields["file"] == data                            # the original file, not the preview

    # the API's mask for the same image and box
    api = httpx.post(box_server[0] + "/v1/segment", params={"model": "tiny_sam"},
                     files={"file": ("scan.png", data, "image/png")}, data={"boxes": json.dumps(sent)},
                     timeout=30)
    assert api.status_code == 200, api.text
    want_mask = np.asarray(Image.open(io.BytesIO(api.content)))
    assert want_mask.shape == (H, W) and set(np.unique(want_mask)) == {0, 255}
    # ... which is the model's own box-prompted mask for the box in image pixels (x, y not swapped)
    from hrmedseg.inference.predictor import SamPredictor
    tiny_sam.eval()
    with torch.inference_mode():
        x = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]
        direct = SamPredictor(tiny_sam).predict_boxes(x, [torch.tensor(sent, dtype=torch.float32)])
    np.testing.assert_array_equal(want_mask > 0, (direct[0, 0] > tiny_sam.config.mask_threshold).numpy())
    assert page.get_attribute("#view", "data-mask-sha256") == hashlib.sha256(api.content).hexdigest()
    np.testing.assert_array_equal(_b64(page, READ_MASK).reshape(H, W), want_mask)

    # the mask as drawn on the canvas (opacity 100 %): class colour where the API says foreground,
    # sampled nearest-neighbour to the canvas; the dashed box outline is left out of the check
    page.fill("#opacity", "100")
    page.dispatch_event("#opacity", "input")
    view = _b64(page, READ_VIEW).reshape(ch, cw, 4)
    shown = np.all(view[..., :3] == FG, axis=-1)
    rows = np.minimum(((np.arange(ch) + 0.5) * H / ch).astype(int), H - 1)
    cols = np.minimum(((np.arange(cw) + 0.5) * W / cw).astype(int), W - 1)
    expect = want_mask[rows][:, cols] > 0
    sx, sy = cw / W, ch / H
    bx0, by0, bx1, by1 = sent[0][0] * sx, sent[0][1] * sy, sent[0][2] * sx, sent[0][3] * sy
    cy, cx = np.mgrid[:ch, :cw] + 0.5
    near_x = (np.minimum(abs(cx - bx0), abs(cx - bx1)) < 3) & (cy > by0 - 3) & (cy < by1 + 3)
    near_y = (np.minimum(abs(cy - by0), abs(cy - by1)) < 3) & (cx > bx0 - 3) & (cx < bx1 + 3)
    keep = ~(near_x | near_y)
    outline = np.all(view[..., :3] == (255, 212, 0), axis=-1)
    assert outline[~keep].mean() > 0.05 and not outline[keep].any()   # the box is drawn where it was sent
    assert 0.02 < expect[keep].mean() < 0.98
    assert (shown[keep] != expect[keep]).mean() < 0.002

    page.fill("#opacity", "50")
    page.dispatch_event("#opacity", "input")
    shot = DOCS / "serve_box.png" if os.environ.get("HRMEDSEG_UPDATE_DOCS") else tmp_path / "box.png"
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    page.close()


def test_exif_rotated_jpeg_keeps_the_servers_pixel_frame(box_server, browser, tmp_path):
    """Browsers rotate JPEGs by their EXIF orientation; the server (like `hrmedseg predict`) does
    not. The page must show the stored frame, or boxes and overlay are rotated against the mask."""
    raw = np.full((200, 300, 3), 70, np.uint8)
    raw[:40, :60] = 255                                   # a white block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6                                      # "rotate 90° clockwise to display"
    src = tmp_path / "rotated.jpg"
    Image.fromarray(raw).save(src, "JPEG", quality=95, exif=exif.tobytes())
    page = _open(browser, box_server, src)
    assert page.get_attribute("#view", "data-image-width") == "300"
    assert page.get_attribute("#view", "data-image-height") == "200"
    corner = page.evaluate("""() => { const c = document.getElementById('view');
        return Array.from(c.getContext('2d').getImageData(4, 4, 1, 1).data); }""")
    assert min(corner[:3]) > 200, corner                 # the stored top-left is shown top-left
    r = page.locator("#view").bounding_box()
    _drag(page, [r["x"] + 0.1 * r["width"], r["y"] + 0.1 * r["height"],
                 r["x"] + 0.6 * r["width"], r["y"] + 0.9 * r["height"]])
    fields = _segment(page, box_server)
    (box,) = json.loads(fields["boxes"])
    assert abs(box[0] - 30) <= 1 and abs(box[1] - 20) <= 1 and abs(box[2] - 180) <= 1 and abs(box[3] - 180) <= 1
    assert page.get_attribute("#view", "data-mask-width") == "300"
    page.close()
