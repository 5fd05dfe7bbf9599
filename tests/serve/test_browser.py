"""Real-browser test: headless Debian Chromium (via Playwright, system binary) against a real
uvicorn on 127.0.0.1. Skips when chromium or playwright is missing; fails when chromium is
installed but does not start."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from ._live import CHROMIUM, DOCS, launch_chromium, live_server

if not os.path.exists(CHROMIUM):
    pytest.skip("chromium not installed (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")

@pytest.fixture(scope="module")
def server(segmenter):
    from hrmedseg.serve.app import create_app
    with live_server(create_app(segmenter)) as url:
        yield url


def test_page_upload_overlay_matches_api(server, sample_paths, tmp_path):
    import hashlib
    import httpx
    sample = sample_paths[2]
    api = httpx.post(server + "/v1/segment", files={"file": (sample.name, sample.read_bytes(), "image/png")}, timeout=60)
    assert api.status_code == 200
    want = np.asarray(Image.open(io.BytesIO(api.content)))

    with sync_api.sync_playwright() as p:
        browser = launch_chromium(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.goto(server + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length > 0", timeout=20000)
            page.set_input_files("#file", str(sample))
            page.wait_for_function("window.hrmedseg.state === 'done' || window.hrmedseg.state === 'error'", timeout=60000)
            assert page.evaluate("window.hrmedseg.state") == "done", page.inner_text("#status")
            # the PNG the page received is the API's PNG ...
            assert page.get_attribute("#view", "data-mask-sha256") == hashlib.sha256(api.content).hexdigest()
            # ... and the mask it decoded (read back from a canvas) has the API's values
            got = np.asarray(page.evaluate("Array.from(window.hrmedseg.readMask())"), np.uint8)
            np.testing.assert_array_equal(got.reshape(want.shape), want)
            # the overlay is drawn: coloured pixels where the mask is foreground
            red = page.evaluate("""() => { const c = document.getElementById('view');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i] > d[i+1] + 60) n++; return n; }""")
            assert red > 0
            assert page.is_visible("#download") and page.get_attribute("#download", "download").endswith("_mask.png")
            assert page.locator("#legend li").count() == 2
            page.fill("#opacity", "70")
            page.dispatch_event("#opacity", "input")
            DOCS.mkdir(exist_ok=True)
            # The committed docs picture is refreshed only on request, so that a test run never
            # modifies tracked files: HRMEDSEG_UPDATE_DOCS=1 python -m pytest tests/serve/test_browser.py
            shot = DOCS / "serve_page.png" if os.environ.get("HRMEDSEG_UPDATE_DOCS") else tmp_path / "page.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
