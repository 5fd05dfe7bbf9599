"""Joint image/mask augmentation pipelines (albumentations) and prediction resizing.

Why this module exists: image and mask must receive the *same* geometric transform, and masks must
never be interpolated into non-existent labels. Every geometric step here uses NEAREST (exact)
interpolation for the mask and bilinear/area for the image, so labels stay in their original set.

Pipelines take either the float32 HWC image in [0, 1] from :func:`hrmedseg.data.io.to_model_channels`
or a uint8 HWC image, and a 2-D integer mask, and return ``{"image": float32 (H, W, C), "mask": int64
(H, W)}`` at the requested ``size`` ((h, w) or int; non-square allowed).

uint8 fast path: uint8 images are augmented *as uint8* (OpenCV is several times faster on uint8 and
the arrays are 4x smaller), then divided by 255 at the end, or returned as uint8 with
``keep_uint8=True`` (the dataset's ``output="uint8"`` mode, normalised later on the GPU by
:func:`hrmedseg.data.gpu_normalize.normalize_batch`). The random parameters drawn for a given seed do
not depend on the dtype, so both paths apply the *same* flips, rotations, affine/elastic warps and
jitter factors; masks are identical, images differ only by rounding to 8 bits after each pixel
operation (within about 1/255 per op). For that, the colour jitter used here (:class:`_ColorJitter`)
rounds its uint8 look-up tables (albumentations truncates, darkening every jittered image by about
half a level) and shifts the hue in float HSV (albumentations' uint8 hue works on 2-degree hue bins
and is off by up to ~10 levels on saturated colours).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# albumentations otherwise queries PyPI for a newer version on import; a library should not make
# network calls (and clusters often have none). An explicit user setting is respected.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
from albucore.functions import sz_lut  # noqa: E402  (albumentations' own dependency)
from albumentations.augmentations.pixel import functional as fpixel  # noqa: E402

__all__ = ["SegTransform", "train_transform", "eval_transform", "resize_mask_to"]

_MASK_INTERP = cv2.INTER_NEAREST_EXACT  # exact nearest: no half-pixel shift (unlike INTER_NEAREST)


def _as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return h, w


class SegTransform:
    """Callable wrapper around an ``A.Compose``: fixes input/output dtypes, stays picklable for workers.

    Input images: uint8 images are augmented as uint8 (see the module docstring); any other dtype is
    converted to float32 first (16-bit and float images must already be scaled, e.g. by
    :func:`~hrmedseg.data.io.to_model_channels`). Output: float32 ``(H, W, C)`` in [0, 1] and an int64
    mask; with ``keep_uint8=True`` (constructor default or per call) a uint8 input instead comes back
    as uint8 ``(H, W, C)`` with the mask in its compact integer dtype (uint8 for up to 256 labels), so
    nothing is widened on the CPU. Non-uint8 inputs always give float32/int64.

    ``channel_independent`` declares that every op treats channels alike, so a grey image may be
    augmented with one channel and repeated to the model's channels afterwards (3x less work; exact
    for :func:`train_transform`/:func:`eval_transform`, whose colour jitter leaves grey pixels grey).
    Set only for pipelines where that holds.
    """

    accepts_keep_uint8 = True  # lets SegmentationDataset detect the uint8 fast path

    def __init__(self, compose: A.Compose, *, keep_uint8: bool = False, channel_independent: bool = False) -> None:
        self.compose = compose
        self.keep_uint8 = bool(keep_uint8)
        self.channel_independent = bool(channel_independent)

    def __call__(self, *, image: np.ndarray, mask: np.ndarray | None = None,
                 keep_uint8: bool | None = None) -> dict[str, Any]:
        keep = self.keep_uint8 if keep_uint8 is None else bool(keep_uint8)
        img = np.asarray(image)
        is_u8 = img.dtype == np.uint8
        if not is_u8 and img.dtype != np.float32:
            img = img.astype(np.float32)
        if img.ndim == 2:
            img = img[:, :, None]
        if not img.flags.c_contiguous:
            img = np.ascontiguousarray(img)  # OpenCV needs it; a sliced-off alpha channel is not
        if mask is None:
            return {"image": self._finish(self.compose(image=img)["image"], is_u8, keep)}
        m = np.asarray(mask)
        if m.dtype not in (np.uint8, np.uint16, np.int32, np.float32):
            # OpenCV cannot warp int64/bool; label maps fit in uint16 (or int32 beyond 65535).
            m = m.astype(np.uint8 if m.max(initial=0) < 256 else (np.uint16 if m.max() < 65536 else np.int32))
        out = self.compose(image=img, mask=m)
        m = np.ascontiguousarray(out["mask"])
        return {"image": self._finish(out["image"], is_u8, keep),
                "mask": m if (is_u8 and keep) else m.astype(np.int64)}

    @staticmethod
    def _finish(x: np.ndarray, is_u8: bool, keep: bool) -> np.ndarray:
        if x.ndim == 2:
            x = x[:, :, None]
        if not is_u8:
            return np.ascontiguousarray(x, dtype=np.float32)
        if keep:
            return np.ascontiguousarray(x)
        out = np.empty(x.shape, np.float32)
        np.multiply(x, np.float32(1 / 255), out=out, dtype=np.float32)  # as to_model_channels scales
        return out

    def __repr__(self) -> str:
        return f"SegTransform({self.compose!r}, keep_uint8={self.keep_uint8})"


# --------------------------------------------------------------------------- ops
_CV2_ROTATE = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}
_CV2_DTYPES = (np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64)


def _cv2_ok(img: np.ndarray) -> bool:
    """An array OpenCV's rotate/remap take directly: 2-D or HWC with at most 4 channels."""
    return img.ndim in (2, 3) and (img.ndim == 2 or img.shape[2] <= 4) and img.dtype in _CV2_DTYPES


class _RandomRotate90(A.RandomRotate90):
    """``A.RandomRotate90`` with ``cv2.rotate`` instead of ``np.rot90`` + copy: identical output
    (both rotate counter-clockwise ``factor`` times), 2x (float) to 7x (uint8 RGB) faster."""

    def apply(self, img: np.ndarray, factor: int, **params: Any) -> np.ndarray:
        k = int(factor) % 4
        if k == 0:
            return img
        if not _cv2_ok(img):
            return np.ascontiguousarray(np.rot90(img, k))
        out = cv2.rotate(np.ascontiguousarray(img), _CV2_ROTATE[k])
        return out.reshape(*out.shape[:2], *img.shape[2:])


# --------------------------------------------------------------------------- colour jitter
def _u8_lut(img: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Apply ``values`` (256 floats, the exact result for each input level) rounded and clipped."""
    table = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return sz_lut(np.ascontiguousarray(img), table, inplace=False)  # ~2x faster than cv2.LUT


def _is_grey(img: np.ndarray) -> bool:
    return img.ndim == 2 or img.shape[2] == 1


def _jitter_brightness(img: np.ndarray, factor: float) -> np.ndarray:
    if img.dtype != np.uint8:
        return fpixel.adjust_brightness_torchvision(img, factor)
    if factor == 1:
        return img
    return _u8_lut(img, np.arange(256, dtype=np.float64) * factor)


def _jitter_contrast(img: np.ndarray, factor: float) -> np.ndarray:
    if img.dtype != np.uint8:
        return fpixel.adjust_contrast_torchvision(img, factor)
    if factor == 1:
        return img
    means = cv2.mean(img)  # per channel, float64; same grey mean as the float path's RGB2GRAY
    mean = means[0] if _is_grey(img) else 0.299 * means[0] + 0.587 * means[1] + 0.114 * means[2]
    return _u8_lut(img, np.arange(256, dtype=np.float64) * factor + mean * (1.0 - factor))


def _jitter_saturation(img: np.ndarray, factor: float) -> np.ndarray:
    # uint8: cv2.addWeighted rounds; the grey it blends with is rounded too (|1 - factor| / 2 level more).
    return fpixel.adjust_saturation_torchvision(img, factor)


def _jitter_hue(img: np.ndarray, factor: float) -> np.ndarray:
    if img.dtype != np.uint8:
        return fpixel.adjust_hue_torchvision(img, factor)
    if _is_grey(img) or factor == 0:
        return img
    # Float HSV is scale-free (H in degrees, S a ratio, V the max), so the 0..255 values can be used
    # directly. A shift taken mod 360 keeps H in [0, 720), which OpenCV's HSV2RGB wraps.
    hsv = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2HSV)
    cv2.add(hsv, (float(factor * 360.0) % 360.0, 0.0, 0.0, 0.0), dst=hsv)
    return cv2.convertScaleAbs(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))  # round + saturate to uint8


class _ColorJitter(A.ColorJitter):
    """``A.ColorJitter`` whose uint8 path matches its float path up to rounding.

    Same parameters and the same random draws (``get_params`` is inherited); float images go through
    albumentations' own functions unchanged.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.transforms = [_jitter_brightness, _jitter_contrast, _jitter_saturation, _jitter_hue]


class _ElasticTransform(A.ElasticTransform):
    """``A.ElasticTransform`` whose smooth displacement field is drawn on a coarse grid.

    The field is the same model — white noise (normalised as albumentations does), Gaussian-
    smoothed with ``sigma`` and scaled by ``alpha`` — computed on a grid ``k = sigma // 4`` times
    coarser (smoothing ``sigma / k`` there, amplitude ``1 / k`` to keep the variance of
    smoothed white noise) and resized bicubically. At 512² with sigma ≈ 20 px a warp takes about
    5 ms instead of 60 ms (the full-resolution blur was most of the strong policy's cost) with the
    same displacement RMS and correlation length in the image interior (tests); the borders use
    a reflected field instead of albumentations' replicated edge, whose displacements reach
    ~100 px there. The warp itself (``cv2.remap``, NEAREST for masks) is albumentations'.
    """

    _grid_cache: tuple[tuple[int, int], np.ndarray] | None = None

    def _grid(self, h: int, w: int) -> np.ndarray:
        """The identity map (h, w, 2) as float32 (x, y), cached per size."""
        if self._grid_cache is None or self._grid_cache[0] != (h, w):
            xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            self._grid_cache = ((h, w), np.dstack([xs, ys]))
        return self._grid_cache[1]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        k = max(1, int(self.sigma // 4))
        hc, wc = -(-h // k), -(-w // k)
        n = 1 if self.same_dxdy else 2
        rng = self.random_generator
        if self.noise_distribution == "gaussian":
            # albumentations divides by the max |noise| of the full-size field: its expected value.
            noise = rng.standard_normal((n, hc, wc), dtype=np.float32) / np.float32(np.sqrt(2.0 * np.log(n * h * w)))
        else:
            noise = rng.uniform(-1.0, 1.0, size=(n, hc, wc)).astype(np.float32)
        for c in noise:
            cv2.GaussianBlur(c, (0, 0), self.sigma / k, dst=c, borderType=cv2.BORDER_REFLECT_101)
        coarse = np.dstack([noise[0], noise[-1]])                         # (hc, wc, 2): dx, dy
        maps = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
        maps *= np.float32(self.alpha / k)
        maps += self._grid(h, w)
        # Fixed-point maps, converted once for every target: bilinear for images, rounded
        # coordinates for NEAREST masks (the same pixels as cv2.remap with the float map).
        fixed = cv2.convertMaps(maps, None, cv2.CV_16SC2)
        fixed_nn = cv2.convertMaps(maps, None, cv2.CV_16SC2, nninterpolation=True)[0]
        return {"map_x": maps[..., 0], "map_y": maps[..., 1], "fixed": fixed, "fixed_nn": fixed_nn}

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        if not _cv2_ok(img):
            return super().apply(img, **params)
        m1, m2 = params["fixed"]
        out = cv2.remap(img, m1, m2, self.interpolation, borderMode=self.border_mode, borderValue=self.fill)
        return out.reshape(img.shape)

    def apply_to_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        if self.mask_interpolation != cv2.INTER_NEAREST or not _cv2_ok(mask):
            return super().apply_to_mask(mask, **params)
        out = cv2.remap(mask, params["fixed_nn"], None, cv2.INTER_NEAREST, borderMode=self.border_mode,
                        borderValue=self.fill_mask)
        return out.reshape(mask.shape)


def _resize(h: int, w: int) -> A.BasicTransform:
    # area_for_downscale: INTER_AREA when shrinking (anti-aliased), bilinear when enlarging.
    return A.Resize(h, w, interpolation=cv2.INTER_LINEAR, mask_interpolation=_MASK_INTERP,
                    area_for_downscale="image")


def train_transform(
    size: int | Sequence[int],
    strength: Literal["paper", "strong", "none"] = "paper",
) -> SegTransform:
    """Training augmentation at the model size.

    ``"paper"``: resize, horizontal/vertical flips, random 90-degree rotation (square sizes only: a
    rotation would swap h and w otherwise), a small affine (scale 0.9-1.1, rotate +-15 degrees, shift
    +-6.25%, p=0.5) and colour jitter (brightness/contrast/saturation 0.2, hue 0.02, p=0.5), the usual
    recipe of HRMedSeg/QTSeg-style training. ``"strong"`` widens affine and jitter and adds an elastic
    deformation (mean displacement ~1% of the size, p=0.3; its field drawn on a coarse grid,
    :class:`_ElasticTransform`, about 2× the images/s per worker of albumentations' own at 512²:
    ``benchmarks/augment_throughput.py``) for small data sets. ``"none"`` is
    :func:`eval_transform`. Masks are always warped with NEAREST interpolation and filled with 0
    (background) where the affine moves the image out of frame.
    """
    h, w = _as_hw(size)
    if strength == "none":
        return eval_transform((h, w))
    if strength not in ("paper", "strong"):
        raise ValueError(f"strength must be 'paper', 'strong' or 'none', got {strength!r}")
    strong = strength == "strong"
    ops: list[A.BasicTransform] = [_resize(h, w), A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    if h == w:
        ops.append(_RandomRotate90(p=0.5))
    ops.append(A.Affine(
        scale=(0.75, 1.25) if strong else (0.9, 1.1),
        rotate=(-30, 30) if strong else (-15, 15),
        translate_percent=(-0.1, 0.1) if strong else (-0.0625, 0.0625),
        interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.7 if strong else 0.5,
    ))
    if strong:
        s = min(h, w)
        ops.append(_ElasticTransform(alpha=0.0053 * s * s, sigma=0.04 * s, interpolation=cv2.INTER_LINEAR,
                                      mask_interpolation=cv2.INTER_NEAREST,
                                      border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.3))
    j = 0.3 if strong else 0.2
    ops.append(_ColorJitter(brightness=j, contrast=j, saturation=j, hue=0.05 if strong else 0.02,
                            p=0.7 if strong else 0.5))
    return SegTransform(A.Compose(ops), channel_independent=True)


def eval_transform(size: int | Sequence[int] | None) -> SegTransform:
    """Deterministic resize to the model size (image area/bilinear, mask nearest); ``None`` keeps the size."""
    if size is None:
        return SegTransform(A.Compose([]), channel_independent=True)
    h, w = _as_hw(size)
    return SegTransform(A.Compose([_resize(h, w)]), channel_independent=True)


def resize_mask_to(
    pred: torch.Tensor,
    size: int | Sequence[int],
    *,
    from_logits: bool = True,
    threshold: float = 0.5,
) -> torch.Tensor:
    """Map network output ``(B, K, h, w)`` or ``(K, h, w)`` back to labels at ``size`` (e.g. ``orig_size``).

    Why here: the model sees resized images, metrics must be computed at the original resolution.
    Scores are resized bilinearly (float32) *before* the decision, which gives smoother boundaries than
    resizing labels: K == 1 is thresholded (sigmoid(logit) > ``threshold``, or prob > ``threshold`` with
    ``from_logits=False``), K > 1 takes the argmax. Returns long labels ``(B, H, W)`` or ``(H, W)``;
    images are processed one at a time to bound memory at large sizes.
    """
    h, w = _as_hw(size)
    squeeze = pred.ndim == 3
    x = pred[None] if squeeze else pred
    if x.ndim != 4:
        raise ValueError(f"expected (B, K, h, w) or (K, h, w), got shape {tuple(pred.shape)}")
    outs = []
    for b in range(x.shape[0]):
        up = F.interpolate(x[b: b + 1].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
        if up.shape[0] == 1:
            if from_logits:
                t = float(np.log(threshold / (1.0 - threshold))) if 0.0 < threshold < 1.0 else (
                    float("inf") if threshold >= 1.0 else float("-inf"))
                outs.append((up[0] > t).long())
            else:
                outs.append((up[0] > threshold).long())
        else:
            outs.append(up.argmax(dim=0))
    out = torch.stack(outs)
    return out[0] if squeeze else out
