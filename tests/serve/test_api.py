"""API tests with FastAPI's TestClient: every endpoint, every bad input, identity with predict."""
import asyncio
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fastapi.testclient import TestClient

from hrmedseg.inference.predictor import SamPredictor
from hrmedseg.serve.app import create_app


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(w: int = 60000, h: int = 60000) -> bytes:
    """A tiny PNG whose hand-written IHDR claims w x h (8-bit grey)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def client(segmenter):
    app = create_app(segmenter, max_upload_bytes=2 << 20, max_pixels=30_000_000)
    with TestClient(app) as c:
        yield c


def _post(client, data, name="img.png", ctype="image/png", **params):
    return client.post("/v1/segment", params=params, files={"file": (name, data, ctype)})


def _assert_ok_after(client, sample):
    r = _post(client, sample.read_bytes())
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


def test_healthz_models_page_docs(client):
    assert client.get("/healthz").json()["status"] == "ok"
    m = client.get("/v1/models").json()["models"]
    assert m[0]["name"] == "hrmedseg" and m[0]["box_prompts"] is False and m[0]["default"]
    assert m[0]["class_names"] == ["background", "foreground"]
    page = client.get("/")
    assert page.status_code == 200 and "hrmedseg" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").status_code == 200
    assert client.get("/openapi.json").json()["paths"]["/v1/segment"]["post"]["requestBody"]
    assert client.get("/docs").status_code == 200
    r = client.get("/nope")
    assert r.status_code == 404 and set(r.json()) == {"error"}


def test_same_mask_as_hrmedseg_predict(client, sample_paths, tmp_path):
    from hrmedseg.cli.main import main
    assert main(["predict", "hrmedseg", *map(str, sample_paths), "-o", str(tmp_path), "--size", "256",
                 "--device", "cpu", "--no-overlay"]) == 0
    for p in sample_paths:
        want = (tmp_path / f"{p.stem}_mask.png").read_bytes()
        r = _post(client, p.read_bytes())
        assert r.status_code == 200
        assert r.content == want, p.name        # byte-identical PNG
        got = np.asarray(Image.open(io.BytesIO(r.content)))
        assert got.shape == Image.open(p).size[::-1]
        j = _post(client, p.read_bytes(), format="json").json()
        labels = (np.asarray(Image.open(io.BytesIO(want))) > 0).astype(np.uint8)
        rle = j["rle"]
        decoded = np.repeat(rle["values"], rle["counts"]).reshape(rle["size"])
        np.testing.assert_array_equal(decoded, labels)
        assert j["classes"][1]["area"] == int(labels.sum())
        if labels.any():
            ys, xs = np.nonzero(labels)
            assert j["classes"][1]["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_raw_body_upload(client, sample_paths):
    data = sample_paths[0].read_bytes()
    a = client.post("/v1/segment", content=data, headers={"content-type": "application/octet-stream"})
    b = _post(client, data)
    assert a.status_code == 200 and a.content == b.content


@pytest.mark.parametrize("case", ["not_image", "truncated", "wrong_ctype", "empty", "empty_file",
                                  "oversized", "bomb", "bad_format", "no_file_field", "unknown_model",
                                  "boxes_on_plain_model", "garbage_multipart"])
def test_bad_inputs_answer_4xx_one_line(client, sample_paths, case):
    good = sample_paths[0].read_bytes()
    if case == "not_image":
        r = _post(client, b"this is plain text, not an image" * 10, name="a.png")
    elif case == "truncated":
        r = _post(client, good[: len(good) // 2])
    elif case == "wrong_ctype":
        r = client.post("/v1/segment", content=good, headers={"content-type": "application/json"})
    elif case == "empty":
        r = client.post("/v1/segment", content=b"", headers={"content-type": "image/png"})
    elif case == "empty_file":
        r = _post(client, b"")
    elif case == "oversized":
        r = _post(client, b"\x89PNG\r\n\x1a\n" + b"\x00" * (3 << 20))
    elif case == "bomb":
        r = _post(client, _bomb_png())
    elif case == "bad_format":
        r = _post(client, good, format="jpeg")
    elif case == "no_file_field":
        r = client.post("/v1/segment", files={"other": ("a.png", good, "image/png")})
    elif case == "unknown_model":
        r = _post(client, good, model="../../etc/passwd")
    elif case == "boxes_on_plain_model":
        r = client.post("/v1/segment", files={"file": ("a.png", good, "image/png")}, data={"boxes": "[[1,1,5,5]]"})
    else:
        r = client.post("/v1/segment", content=b"--xx\r\nnonsense", headers={"content-type": "multipart/form-data; boundary=xx"})
    assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"] and "\n" not in body["error"]
    if case in ("oversized", "bomb"):
        assert r.status_code == 413
    if case == "wrong_ctype":
        assert r.status_code == 415
    _assert_ok_after(client, sample_paths[1])   # the server keeps answering correctly


def test_bomb_refused_before_decoding(client, monkeypatch):
    from PIL import ImageFile
    called = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: called.append(1))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)   # even with Pillow's own guard off
    r = _post(client, _bomb_png())
    assert r.status_code == 413 and "60000x60000" in r.json()["error"]
    assert not called


def test_16bit_and_rgba_work(client):
    rng = np.random.default_rng(0)
    g16 = (rng.random((96, 120)) * 65535).astype(np.uint16)
    r = _post(client, _png(g16))
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (120, 96)
    import cv2
    ok, rgb16 = cv2.imencode(".png", (rng.random((64, 80, 3)) * 65535).astype(np.uint16))
    r = _post(client, rgb16.tobytes())
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (80, 64)
    rgba = (rng.random((70, 50, 4)) * 255).astype(np.uint8)
    r = _post(client, _png(rgba), format="json")
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (50, 70)


def test_tiff_upload_matches_png(client, sample_paths):
    import tifffile
    from hrmedseg.data.io import read_image
    img = read_image(sample_paths[0])
    buf = io.BytesIO()
    tifffile.imwrite(buf, img)
    a = _post(client, buf.getvalue(), name="x.tif", ctype="image/tiff")
    b = _post(client, sample_paths[0].read_bytes())
    assert a.status_code == 200 and a.content == b.content


def test_uploads_never_touch_disk(client, sample_paths, monkeypatch):
    import tempfile
    def boom(*a, **k):
        raise AssertionError("temp file created")
    monkeypatch.setattr(tempfile, "mkstemp", boom)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", boom)
    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", boom)
    assert _post(client, sample_paths[0].read_bytes()).status_code == 200


def test_preview(client, sample_paths):
    r = client.post("/v1/preview", params={"max_side": 64}, files={"file": ("a.png", sample_paths[2].read_bytes(), "image/png")})
    assert r.status_code == 200 and max(Image.open(io.BytesIO(r.content)).size) == 64
    assert r.headers["x-image-width"] == str(Image.open(sample_paths[2]).size[0])


def test_token_required_when_set(segmenter, sample_paths):
    with TestClient(create_app(segmenter, token="s3cret")) as c:
        assert c.get("/v1/models").status_code == 401
        r = c.post("/v1/segment", files={"file": ("a.png", sample_paths[0].read_bytes(), "image/png")},
                   headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and set(r.json()) == {"error"}
        assert c.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_cors_off_by_default(client):
    r = client.options("/v1/models", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers
    r = client.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_queue_full_503_and_timeout(segmenter, sample_paths):
    import threading
    import time
    from hrmedseg.serve import batching
    gate = threading.Event()
    orig = batching.run_jobs

    def slow(seg, jobs):
        gate.wait(10)
        return orig(seg, jobs)

    batching.run_jobs = slow
    try:
        app = create_app(segmenter, queue_size=1, max_batch=1, batch_wait_ms=0, timeout_s=30)
        with TestClient(app) as c:
            data = sample_paths[0].read_bytes()
            results = {}

            def call(i):
                results[i] = _post(c, data)
            threads = [threading.Thread(target=call, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
                time.sleep(0.5)
            gate.set()
            for t in threads:
                t.join()
            codes = sorted(r.status_code for r in results.values())
            assert 200 in codes and 503 in codes, codes
            busy = next(r for r in results.values() if r.status_code == 503)
            assert int(busy.headers["retry-after"]) >= 1 and set(busy.json()) == {"error"}
            assert _post(c, data).status_code == 200
        gate.clear()
        app = create_app(segmenter, timeout_s=0.3)
        with TestClient(app) as c:
            r = _post(c, sample_paths[0].read_bytes())
            assert r.status_code == 504 and set(r.json()) == {"error"}
            gate.set()
            for m in app.state.models.values():   # the next request may wait for the blocked batch
                m.batcher.timeout_s = 60
            assert _post(c, sample_paths[0].read_bytes()).status_code == 200
    finally:
        batching.run_jobs = orig
        gate.set()


def test_dynamic_batching_groups_and_matches_single(segmenter, sample_paths):
    from hrmedseg.serve.batching import DynamicBatcher
    from hrmedseg.data.io import read_image
    imgs = [read_image(p) for p in sample_paths]
    b = DynamicBatcher(segmenter, max_batch=8, batch_wait_ms=200)

    async def go():
        try:
            return await asyncio.gather(*(b.submit(im) for im in imgs))
        finally:
            await b.stop()
    jobs = asyncio.run(go())
    assert max(j.batch_size for j in jobs) > 1 and b.stats["batches"] < len(imgs)
    for im, j in zip(imgs, jobs):
        np.testing.assert_array_equal(j.result, segmenter.predict_arrays([im])[0].labels)
    b.close()


def test_box_prompts_with_tiny_sam(tiny_sam, sample_paths):
    with TestClient(create_app({"tiny_sam": tiny_sam}, device="cpu", max_pixels=10_000_000)) as c:
        m = c.get("/v1/models").json()["models"][0]
        assert m["box_prompts"] is True
        data = sample_paths[0].read_bytes()
        r = c.post("/v1/segment", params={"format": "json"}, files={"file": ("a.png", data, "image/png")},
                   data={"boxes": json.dumps([[10, 20, 120, 140]])})
        assert r.status_code == 200, r.text
        j = r.json()
        assert (j["width"], j["height"]) == (256, 256) and j["boxes"] == [[10, 20, 120, 140]]
        for bad in ([[10, 20, 300, 140]], [[-5, 0, 10, 10]], [[50, 50, 10, 10]], "[[1,2,3]]", "nope"):
            r = c.post("/v1/segment", files={"file": ("a.png", data, "image/png")},
                       data={"boxes": bad if isinstance(bad, str) else json.dumps(bad)})
            assert r.status_code == 400 and set(r.json()) == {"error"}, (bad, r.text)
        assert "outside" in c.post("/v1/segment", files={"file": ("a.png", data, "image/png")},
                                   data={"boxes": "[[0,0,999,10]]"}).json()["error"]
        r = c.post("/v1/segment", files={"file": ("a.png", data, "image/png")})   # unprompted still works
        assert r.status_code == 200


def test_4000x5000_upload_gives_full_size_mask(client):
    """A large photo-sized upload: the mask comes back at the image's own size."""
    yy, xx = np.mgrid[:5000, :4000]
    img = ((np.sin(yy / 200.0) * np.cos(xx / 150.0) + 1) * 120).astype(np.uint8)
    r = _post(client, _png(img))
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (4000, 5000)
    assert r.headers["X-Image-Width"] == "4000" and r.headers["X-Image-Height"] == "5000"


def _non_square_scene(h: int = 120, w: int = 300) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = (xx * 0.8).astype(np.uint8)
    img[..., 1] = (yy * 2).astype(np.uint8)
    img[((xx - 200) / 60.0) ** 2 + ((yy - 60) / 35.0) ** 2 < 1] = 220
    return img


def _direct_box_mask(model, img: np.ndarray, box) -> np.ndarray:
    """What the API must return: ``predict_boxes`` on the RGB image (0-255) with the box in image
    pixels, thresholded at the model's mask threshold (in eval mode, as the server runs it)."""
    import torch
    model.eval()
    x = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        logits = SamPredictor(model).predict_boxes(x, [torch.tensor([box], dtype=torch.float32)])
    return (logits[0, 0] > model.config.mask_threshold).numpy()


def test_box_prompt_mask_equals_predict_boxes_on_non_square_image(tiny_sam):
    img = _non_square_scene()
    box = [150, 30, 260, 95]
    want = _direct_box_mask(tiny_sam, img, box)
    assert want.shape == (120, 300) and 0.05 < want.mean() < 0.95
    # the reference is sensitive to the box: x and y swapped give another mask
    assert (want != _direct_box_mask(tiny_sam, img, [30, 150, 95, 260])).mean() > 0.01
    with TestClient(create_app({"tiny_sam": tiny_sam}, device="cpu", max_pixels=10_000_000)) as c:
        r = c.post("/v1/segment", files={"file": ("a.png", _png(img), "image/png")},
                   data={"boxes": json.dumps([box])})
        assert r.status_code == 200, r.text
        got = np.asarray(Image.open(io.BytesIO(r.content)))
    assert got.shape == (120, 300)
    np.testing.assert_array_equal(got > 0, want)


def test_access_log_one_line_per_request(client, caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="hrmedseg.serve.access"):
        client.get("/healthz")
        client.get("/nope")
    lines = [r.getMessage() for r in caplog.records if r.name == "hrmedseg.serve.access"]
    assert len(lines) == 2
    method, path, status, ms, unit = lines[0].split()
    assert (method, path, status, unit) == ("GET", "/healthz", "200", "ms") and float(ms) >= 0
    assert lines[1].split()[:3] == ["GET", "/nope", "404"]
