"""FastAPI app: ``POST /v1/segment``, ``GET /v1/models``, ``GET /healthz`` and the web page.

Every error is a 4xx/5xx with a one-line JSON body ``{"error": "..."}``. Uploads are read into
memory with a byte cap (never spooled to disk), decoded by :mod:`.decode` (pixel count checked
from the header first) and segmented through :class:`~.batching.DynamicBatcher`; the mask is the
same as ``hrmedseg predict`` writes (PNG bytes identical: labels x255 for binary models).
"""
from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import math
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import HrmedsegError
from .._optional import require

require("fastapi", extra="serve", feature="hrmedseg serve")
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import FileResponse, JSONResponse, Response  # noqa: E402
from fastapi.staticfiles import StaticFiles  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from .batching import DynamicBatcher, QueueFull  # noqa: E402
from .decode import UploadError, decode_upload  # noqa: E402

#: One line per request: ``METHOD PATH STATUS MS``, at INFO (see :func:`configure_access_log`).
access_log = logging.getLogger("hrmedseg.serve.access")


def configure_access_log(stream: Any = None) -> logging.Handler:
    """Print the access log (``hrmedseg.serve.access``) with a timestamp on ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    return handler

DEFAULT_MAX_UPLOAD_BYTES = 64 << 20
DEFAULT_MAX_PIXELS = 64_000_000

_OPENAPI_UPLOAD = {
    "parameters": [
        {"name": "format", "in": "query", "required": False,
         "schema": {"type": "string", "enum": ["png", "json"], "default": "png"},
         "description": "png: the mask as a PNG (binary models: 0/255, as `hrmedseg predict` writes); "
                        "json: class areas, bounding boxes and a run-length encoding"},
        {"name": "model", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "model name from GET /v1/models (default: the first)"},
    ],
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "PNG, JPEG, BMP, GIF, TIFF, DICOM or NIfTI (.nii/.nii.gz)"},
            "boxes": {"type": "string",
                      "description": "JSON [[x0, y0, x1, y1], ...] in image pixels (box-promptable models)"}}}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    }},
    "responses": {"200": {"description": "mask", "content": {"image/png": {}, "application/json": {}}},
                  "4XX": {"description": '{"error": "..."}'}, "503": {"description": "queue full"}},
}


class ApiError(HrmedsegError):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        self.status = status
        self.message = " ".join(str(message).split()) or "error"
        self.headers = dict(headers or {})
        super().__init__(self.message)


# --------------------------------------------------------------------------- helpers
def mask_png_bytes(labels: np.ndarray, num_classes: int) -> bytes:
    """The bytes ``hrmedseg predict`` writes for this mask (``write_mask_png`` of labels x255
    for binary models, labels otherwise)."""
    from PIL import Image
    from ..data.io import _png_bytes
    m = labels.astype(np.uint8) * np.uint8(255) if num_classes <= 2 else labels
    m = np.asarray(m)
    im = Image.fromarray(m.astype(np.uint16) if int(m.max(initial=0)) > 255 else m.astype(np.uint8))
    return _png_bytes(im)


def run_length(labels: np.ndarray) -> dict[str, Any]:
    flat = np.ascontiguousarray(labels).ravel()
    if flat.size == 0:
        return {"order": "row-major", "size": list(labels.shape), "values": [], "counts": []}
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    counts = np.diff(np.concatenate([starts, [flat.size]]))
    return {"order": "row-major", "size": [int(labels.shape[0]), int(labels.shape[1])],
            "values": flat[starts].astype(int).tolist(), "counts": counts.astype(int).tolist()}


def mask_summary(labels: np.ndarray, class_names: list[str]) -> list[dict[str, Any]]:
    total = labels.size
    out = []
    for k, name in enumerate(class_names):
        hit = labels == k
        area = int(hit.sum())
        entry: dict[str, Any] = {"label": k, "name": name, "area": area,
                                 "fraction": area / total if total else 0.0, "bbox": None}
        if area:
            rows = np.flatnonzero(hit.any(axis=1))
            cols = np.flatnonzero(hit.any(axis=0))
            entry["bbox"] = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
        out.append(entry)
    return out


def _class_names(seg: Any) -> list[str]:
    cfg = getattr(seg.model, "config", None)
    names = getattr(cfg, "class_names", None) or getattr(seg.model, "class_names", None)
    k = max(int(seg.num_classes), 1)
    n = 2 if k == 1 else k
    if names and len(names) in (n, n - 1):
        names = list(names) if len(names) == n else ["background", *names]
        return [str(v) for v in names]
    return ["background", "foreground"] if k == 1 else (["background"] + [f"class {i}" for i in range(1, k)])


def parse_boxes(text: str | None, hw: tuple[int, int]) -> list[list[float]] | None:
    if text is None or not text.strip():
        return None
    try:
        boxes = json.loads(text)
    except ValueError:
        raise ApiError(400, "boxes must be JSON: [[x0, y0, x1, y1], ...]") from None
    if isinstance(boxes, list) and len(boxes) == 4 and all(isinstance(v, (int, float)) for v in boxes):
        boxes = [boxes]
    if not isinstance(boxes, list) or not boxes or len(boxes) > 64:
        raise ApiError(400, "boxes must be a list of 1 to 64 boxes [x0, y0, x1, y1]")
    h, w = hw
    out = []
    for b in boxes:
        if (not isinstance(b, list) or len(b) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)):
            raise ApiError(400, f"box {b!r:.60} is not [x0, y0, x1, y1] numbers")
        x0, y0, x1, y1 = (float(v) for v in b)
        if not (x0 < x1 and y0 < y1):
            raise ApiError(400, f"box {b} is empty or reversed (need x0 < x1 and y0 < y1)")
        if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
            raise ApiError(400, f"box {b} lies outside the {w}x{h} image")
        out.append([x0, y0, x1, y1])
    return out


def _parse_multipart(body: bytes, content_type: str) -> dict[str, tuple[str | None, bytes]]:
    """Parse a multipart/form-data body held in memory: {field: (filename, bytes)}."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart body without a boundary")
    parts: dict[str, tuple[str | None, bytes]] = {}
    cur: dict[str, Any] = {}

    def on_part_begin() -> None:
        cur.clear()
        cur.update(headers={}, field=b"", value=b"", data=io.BytesIO())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        cur["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        cur["value"] += data[start:end]

    def on_header_end() -> None:
        cur["headers"][cur["field"].lower()] = cur["value"]
        cur["field"], cur["value"] = b"", b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        cur["data"].write(data[start:end])

    def on_part_end() -> None:
        _, disp = parse_options_header(cur["headers"].get(b"content-disposition", b""))
        name = disp.get(b"name")
        if name is not None:
            fn = disp.get(b"filename")
            parts[name.decode("utf-8", "replace")] = (
                fn.decode("utf-8", "replace") if fn is not None else None, cur["data"].getvalue())

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # noqa: BLE001
        raise ApiError(400, f"malformed multipart body ({type(exc).__name__})") from None
    return parts


def _static_dir() -> Path:
    return Path(str(resources.files("hrmedseg") / "serve" / "static"))


# --------------------------------------------------------------------------- the app
class _Model:
    def __init__(self, name: str, seg: Any, batcher: DynamicBatcher) -> None:
        self.name, self.seg, self.batcher = name, seg, batcher
        self.class_names = _class_names(seg)
        from ..inference.predictor import supports_box_prompts
        self.box_prompts = supports_box_prompts(seg.model)

    def describe(self, default: bool) -> dict[str, Any]:
        from ..data.io import class_palette
        return {"name": self.name, "default": default, "num_classes": int(self.seg.num_classes),
                "class_names": self.class_names,
                "colors": class_palette(len(self.class_names)).tolist(),
                "box_prompts": self.box_prompts, "input_size": list(self.seg.size),
                "device": str(self.seg.device), "precision": self.seg.precision,
                "mask_png_scale": 255 if self.seg.num_classes <= 2 else 1}


def _as_segmenter(src: Any, device: str, size: Any) -> Any:
    from ..inference.segmenter import Segmenter
    if isinstance(src, Segmenter):
        return src
    return Segmenter(src, device=device, size=size)


def torch_device(device: str) -> Any:
    import torch
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _default_name(src: Any) -> str:
    from ..inference.segmenter import Segmenter
    if isinstance(src, Segmenter):
        return getattr(src.model, "model_name", None) or type(src.model).__name__.lower()
    if isinstance(src, (str, Path)):
        return Path(str(src)).name if Path(str(src)).exists() else str(src)
    return getattr(src, "model_name", None) or type(src).__name__.lower()


def create_app(segmenter_or_source: Any, *, token: str | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
               batch_wait_ms: float = 10.0, max_batch: int = 8, queue_size: int = 64,
               timeout_s: float = 60.0, device: str = "auto", size: Any = None,
               cors_origins: list[str] | None = None):
    """Build the FastAPI app.

    ``segmenter_or_source``: a :class:`Segmenter`, a model source for it (name, folder, or
    ``nn.Module``), or a dict ``{name: segmenter_or_source}`` to serve several models (the first
    is the default). ``device``/``size`` apply to sources that are not already Segmenters.
    ``token``: when set, every ``/v1`` call needs ``Authorization: Bearer <token>``.
    CORS is off unless ``cors_origins`` is given.
    """
    sources = dict(segmenter_or_source) if isinstance(segmenter_or_source, Mapping) \
        else {_default_name(segmenter_or_source): segmenter_or_source}
    if not sources:
        raise ValueError("no model to serve")
    models: dict[str, _Model] = {}
    for name, src in sources.items():
        seg = _as_segmenter(src, device, size)
        models[str(name)] = _Model(str(name), seg, DynamicBatcher(
            seg, max_batch=max_batch, batch_wait_ms=batch_wait_ms, queue_size=queue_size, timeout_s=timeout_s))
    default_model = next(iter(models))
    started = time.time()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        for m in models.values():
            await m.batcher.start()
        try:
            yield
        finally:
            for m in models.values():
                await m.batcher.stop()

    app = FastAPI(title="hrmedseg serve", version="1", lifespan=lifespan,
                  description="Segmentation of medical images of any size. Errors: `{\"error\": \"...\"}`.")
    app.state.models = models
    app.state.limits = {"max_upload_bytes": max_upload_bytes, "max_pixels": max_pixels}
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    def err(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": " ".join(str(message).split()) or "error"}, status_code=status,
                            headers=dict(headers or {}))

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return err(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return err(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(v) for v in first.get("loc", []))
        return err(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return err(500, f"internal error ({type(exc).__name__})")

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if token and request.url.path.startswith("/v1"):
            got = request.headers.get("authorization", "")
            scheme, _, value = got.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
                return err(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    # registered last, so it is the outermost middleware and sees 401s and errors too
    @app.middleware("http")
    async def _access(request: Request, call_next):
        t0 = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            access_log.info("%s %s %d %.1f ms", request.method, request.url.path, status,
                            (time.perf_counter() - t0) * 1000.0)

    @app.get("/healthz", summary="liveness: 200 when the server answers")
    async def healthz():
        return {"status": "ok", "uptime_s": round(time.time() - started, 1)}

    @app.get("/v1/models", summary="the models this server runs")
    async def list_models():
        return {"models": [m.describe(n == default_model) for n, m in models.items()],
                "limits": app.state.limits,
                "stats": {n: dict(m.batcher.stats, queued=m.batcher.queued) for n, m in models.items()}}

    async def _read_body(request: Request) -> bytes:
        cl = request.headers.get("content-length")
        cap = max_upload_bytes + (64 << 10)  # room for multipart framing
        if cl is not None:
            try:
                if int(cl) > cap:
                    raise ApiError(413, f"upload of {int(cl)} bytes exceeds the limit of {max_upload_bytes} bytes")
            except ValueError:
                raise ApiError(400, "bad Content-Length header") from None
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > cap:
                raise ApiError(413, f"upload exceeds the limit of {max_upload_bytes} bytes")
        return bytes(buf)

    async def _upload(request: Request) -> tuple[bytes, str | None]:
        ctype = request.headers.get("content-type", "")
        main = ctype.split(";")[0].strip().lower()
        if main == "multipart/form-data":
            body = await _read_body(request)
            if not body:
                raise ApiError(400, "empty request body")
            parts = _parse_multipart(body, ctype)
            if "file" not in parts:
                raise ApiError(400, "multipart body has no 'file' field")
            data = parts["file"][1]
            boxes = parts.get("boxes", (None, b""))[1].decode("utf-8", "replace") or None
        elif main == "application/octet-stream" or main.startswith("image/") or main.startswith("application/dicom"):
            data = await _read_body(request)
            boxes = request.query_params.get("boxes")
        else:
            raise ApiError(415, f"unsupported content type '{main or '(none)'}': send multipart/form-data "
                                "with a 'file' field, or the image bytes as application/octet-stream or image/*")
        if len(data) > max_upload_bytes:
            raise ApiError(413, f"upload of {len(data)} bytes exceeds the limit of {max_upload_bytes} bytes")
        if not data:
            raise ApiError(400, "empty upload (0 bytes)")
        return data, boxes

    @app.post("/v1/segment", summary="segment one uploaded image", openapi_extra=_OPENAPI_UPLOAD)
    async def segment(request: Request):
        fmt = request.query_params.get("format", "png").lower()
        if fmt not in ("png", "json"):
            raise ApiError(400, f"format must be png or json, got {fmt!r:.40}")
        name = request.query_params.get("model") or default_model
        if name not in models:
            raise ApiError(404, f"unknown model {name!r:.80}; GET /v1/models lists them")
        m = models[name]
        data, boxes_text = await _upload(request)
        try:
            image = await asyncio.to_thread(decode_upload, data, max_pixels, max_upload_bytes)
        except UploadError as exc:
            raise ApiError(exc.status, str(exc)) from None
        del data
        boxes = parse_boxes(boxes_text, image.shape[:2])
        if boxes is not None and not m.box_prompts:
            raise ApiError(400, f"model {name} does not take box prompts")
        try:
            job = await m.batcher.submit(image, boxes)
        except QueueFull as exc:
            raise ApiError(503, str(exc), {"Retry-After": str(exc.retry_after)}) from None
        except asyncio.TimeoutError:
            raise ApiError(504, f"segmentation did not finish within {m.batcher.timeout_s:g} s") from None
        except ValueError as exc:  # e.g. a channel layout the model cannot take
            raise ApiError(422, f"cannot segment this image: {exc}") from None
        labels = job.result
        h, w = labels.shape
        headers = {"X-Image-Width": str(w), "X-Image-Height": str(h), "X-Model": name,
                   "X-Batch-Size": str(job.batch_size)}
        if fmt == "png":
            png = await asyncio.to_thread(mask_png_bytes, labels, m.seg.num_classes)
            return Response(png, media_type="image/png", headers=headers)

        def summary() -> dict[str, Any]:
            return {"model": name, "width": w, "height": h,
                    "mask_png_scale": 255 if m.seg.num_classes <= 2 else 1,
                    "classes": mask_summary(labels, m.class_names), "rle": run_length(labels),
                    "boxes": boxes}
        return JSONResponse(await asyncio.to_thread(summary), headers=headers)

    @app.post("/v1/preview", summary="a downscaled RGB PNG of the upload (for formats browsers cannot show)",
              openapi_extra={"requestBody": _OPENAPI_UPLOAD["requestBody"]})
    async def preview(request: Request):
        try:
            side = int(request.query_params.get("max_side", "1600"))
        except ValueError:
            raise ApiError(400, "max_side must be an integer") from None
        side = min(max(side, 16), 4096)
        data, _ = await _upload(request)
        try:
            image = await asyncio.to_thread(decode_upload, data, max_pixels, max_upload_bytes)
        except UploadError as exc:
            raise ApiError(exc.status, str(exc)) from None

        def make() -> bytes:
            from PIL import Image
            from ..data.io import _png_bytes
            from ..inference.visualize import display_rgb
            h, w = image.shape[:2]
            step = max(1, math.ceil(max(h, w) / (2 * side)))
            im = Image.fromarray(display_rgb(image[::step, ::step]))
            im.thumbnail((side, side), Image.Resampling.BILINEAR)
            return _png_bytes(im)
        return Response(await asyncio.to_thread(make), media_type="image/png",
                        headers={"X-Image-Width": str(image.shape[1]), "X-Image-Height": str(image.shape[0])})

    static = _static_dir()

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(static / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=static), name="static")
    return app
