"""Per-item joint image/mask augmentation pipelines (numpy in, numpy out) and prediction resizing.

Why this module exists: image and mask must receive the *same* geometric transform, and masks must
never be interpolated into non-existent labels. Masks are warped with nearest interpolation (labels
stay in their original set), images bilinearly (area average when shrinking).

One definition, two executors: the policies, their random parameters (drawn from a seeded
``torch.Generator``), the affine matrices and the elastic fields all come from
:mod:`hrmedseg.data.augment`, whose batched torch ops run on the GPU (and on CPU batches). A
DataLoader worker augments one image at a time, where OpenCV's uint8 kernels (``warpAffine``,
``remap``, look-up tables) are 4-5x faster than float torch ops on one thread
(``benchmarks/augment_throughput.py``), so :class:`SegTransform` executes the same parameters with
OpenCV (:func:`apply_cv2`); the tests check both executors against each other and against
references. Images with more than 4 channels go through the torch ops.

Pipelines take either the float32 HWC image in [0, 1] from :func:`hrmedseg.data.io.to_model_channels`
or a uint8 HWC image, and a 2-D integer mask, and return ``{"image": float32 (H, W, C), "mask": int64
(H, W)}`` at the requested ``size`` ((h, w) or int; non-square allowed).

uint8 fast path: uint8 images are augmented *as uint8*, then divided by 255 at the end, or returned as
uint8 with ``keep_uint8=True`` (the dataset's ``output="uint8"`` mode, normalised later on the GPU by
:func:`hrmedseg.data.gpu_normalize.normalize_batch`). The parameters drawn for a given seed do not
depend on the dtype: masks are identical, images differ only by rounding to 8 bits after each colour
op (within about 1/255 per op).
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from .._optional import require
from .augment import (
    LUMA_WEIGHTS,
    AugmentParams,
    BatchAugment,
    _elastic_coarse,
    affine_matrices,
    as_hw,
    dihedral_steps,
)

cv2 = require("cv2", extra="train", feature="training augmentation")

__all__ = ["SegTransform", "train_transform", "eval_transform", "resize_mask_to", "apply_cv2"]

_TORCH_MASK_DTYPES = (np.uint8, np.int16, np.int32, np.int64)
_CV2_MASK_DTYPES = (np.uint8, np.uint16, np.int16, np.int32)
_MASK_INTERP = cv2.INTER_NEAREST_EXACT  # exact nearest: no half-pixel shift (unlike INTER_NEAREST)
_CV2_ROTATE = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180, 3: cv2.ROTATE_90_CLOCKWISE}


def _cv2_mask(mask: np.ndarray) -> np.ndarray:
    """A mask dtype OpenCV can warp (it cannot do int64/bool); label maps fit in uint16 or int32."""
    if mask.dtype in _CV2_MASK_DTYPES:
        return mask
    hi = int(mask.max(initial=0))
    return mask.astype(np.uint8 if hi < 256 else (np.uint16 if hi < 65536 else np.int32))


def _u8_lut(img: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Apply ``values`` (256 floats, the exact result for each input level) rounded and clipped."""
    table = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return cv2.LUT(img, table).reshape(img.shape)


def _grey_mean(img: np.ndarray) -> float:
    means = cv2.mean(img)[: img.shape[2]]  # per channel, float64 (at most 4)
    return sum(w * m for w, m in zip(LUMA_WEIGHTS, means)) if len(means) == 3 else sum(means) / len(means)


def _brightness(img: np.ndarray, f: float) -> np.ndarray:
    if img.dtype == np.uint8:
        return _u8_lut(img, np.arange(256, dtype=np.float64) * f)
    return np.clip(img * np.float32(f), 0, 1)


def _contrast(img: np.ndarray, f: float) -> np.ndarray:
    mean = _grey_mean(img)
    if img.dtype == np.uint8:
        return _u8_lut(img, np.arange(256, dtype=np.float64) * f + mean * (1.0 - f))
    return np.clip(img * np.float32(f) + np.float32(mean * (1.0 - f)), 0, 1)


def _saturation(img: np.ndarray, f: float) -> np.ndarray:
    if img.shape[2] != 3:
        return img
    # uint8: the grey is rounded (at most |1 - f| / 2 level more); addWeighted rounds and saturates.
    grey = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    out = cv2.addWeighted(img, f, grey, 1.0 - f, 0.0)
    return out if img.dtype == np.uint8 else np.clip(out, 0, 1, out=out)


def _hue(img: np.ndarray, shift: float) -> np.ndarray:
    if img.shape[2] != 3:
        return img
    # Float HSV is scale-free (H in degrees, S a ratio, V the max), so 0..255 values work directly;
    # a shift taken mod 360 keeps H in [0, 720), which OpenCV's HSV2RGB wraps.
    hsv = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2HSV)
    cv2.add(hsv, (float(shift * 360.0) % 360.0, 0.0, 0.0, 0.0), dst=hsv)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return cv2.convertScaleAbs(rgb) if img.dtype == np.uint8 else np.clip(rgb, 0, 1)


_JITTER = (_brightness, _contrast, _saturation, _hue)


def _elastic_field_cv2(noise: np.ndarray, h: int, w: int, alpha: float, sigma: float) -> np.ndarray:
    """:func:`hrmedseg.data.augment.elastic_field` for one sample with OpenCV (the same kernel, border
    and bicubic resize; ~5x faster than torch's bicubic upsampling on one thread)."""
    k = _elastic_coarse(h, w, sigma)[0]
    s = sigma / k
    ksize = 2 * max(1, int(round(4.0 * s))) + 1
    scale = np.float32(1.0 / np.sqrt(2.0 * np.log(2 * h * w)))
    out = []
    for c in noise:
        blurred = cv2.GaussianBlur(c.astype(np.float32) * scale, (ksize, ksize), s, borderType=cv2.BORDER_REFLECT_101)
        if blurred.shape != (h, w):
            blurred = cv2.resize(blurred, (w, h), interpolation=cv2.INTER_CUBIC)
        out.append(blurred * np.float32(alpha / k))
    return np.stack(out)


def apply_cv2(augment: BatchAugment, params: AugmentParams, image: np.ndarray, mask: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """One sample's augmentation (``params`` of length 1) with OpenCV: the ops of
    :meth:`BatchAugment.apply` in the same order with the same parameters, on an HWC uint8 or float32
    image (at most 4 channels) and a 2-D mask (uint8/uint16/int16/int32)."""
    img, m = image, mask
    if augment.size is not None and img.shape[:2] != augment.size:
        h, w = augment.size
        shrink = h * w < img.shape[0] * img.shape[1]
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        if m is not None:
            m = cv2.resize(m, (w, h), interpolation=_MASK_INTERP)
    img = img.reshape(*img.shape[:2], -1)
    h, w = img.shape[:2]
    flip, vflip, turns = (bool(t[0]) if t.dtype == torch.bool else int(t[0]) for t in dihedral_steps(params, h == w))
    if flip or vflip or turns:
        def dihedral(a: np.ndarray) -> np.ndarray:
            shape = a.shape
            if flip or vflip:
                a = cv2.flip(a, -1 if (flip and vflip) else (1 if flip else 0))
            if turns:
                a = cv2.rotate(a, _CV2_ROTATE[turns])  # counter-clockwise quarter turns, as np.rot90
            return a.reshape(a.shape[:2] + shape[2:])
        img = dihedral(img)
        m = None if m is None else dihedral(m)
    affine = bool(params.affine[0])
    elastic = augment.policy.elastic_p > 0 and bool(params.elastic[0])
    if affine or elastic:
        fwd = affine_matrices(params.scale, params.angle, params.shift, h, w)[0].numpy() if affine else None
        if not elastic:
            img = cv2.warpAffine(img, fwd[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=0).reshape(h, w, -1)
            if m is not None:
                m = cv2.warpAffine(m, fwd[:2], (w, h), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                                   borderValue=0)
        else:
            disp = _elastic_field_cv2(params.noise[0].numpy(), h, w, *augment.elastic_alpha_sigma())
            xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            qx, qy = xs + disp[0], ys + disp[1]
            if fwd is not None:  # the affine output is zero outside its frame
                inv = np.linalg.inv(fwd).astype(np.float32)
                outside = (qx < -0.5) | (qx > w - 0.5) | (qy < -0.5) | (qy > h - 0.5)
                qx, qy = (inv[0, 0] * qx + inv[0, 1] * qy + inv[0, 2], inv[1, 0] * qx + inv[1, 1] * qy + inv[1, 2])
                qx[outside] = -10.0
            img = cv2.remap(img, qx, qy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=0).reshape(h, w, -1)
            if m is not None:
                m = cv2.remap(m, qx, qy, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if bool(params.jitter_on[0]):
        f = params.jitter[0].tolist()
        for op_i in params.order[0].tolist():
            if f[op_i] != (0.0 if op_i == 3 else 1.0):
                img = _JITTER[op_i](img, f[op_i]).reshape(h, w, -1)
    return img, m


class SegTransform:
    """Callable per-item pipeline around a :class:`~hrmedseg.data.augment.BatchAugment`: numpy in and
    out, fixed dtypes, picklable for DataLoader workers.

    Input images: uint8 images are augmented and rounded once to uint8 (see the module docstring);
    any other dtype is converted to float32 first (16-bit and float images must already be scaled,
    e.g. by :func:`~hrmedseg.data.io.to_model_channels`). Output: float32 ``(H, W, C)`` in [0, 1] and
    an int64 mask; with ``keep_uint8=True`` (constructor default or per call) a uint8 input instead
    comes back as uint8 ``(H, W, C)`` with the mask in its compact integer dtype (uint8 for up to 256
    labels), so nothing is widened on the CPU. Non-uint8 inputs always give float32/int64.

    Randomness: :meth:`set_random_seed` (called per item by the training sampler's ``SeededDataset``)
    fixes the next draws; without it every call draws a fresh seed from torch's global generator
    (which DataLoader seeds differently per worker).

    ``channel_independent`` declares that every op treats channels alike, so a grey image may be
    augmented with one channel and repeated to the model's channels afterwards (3x less work; exact
    for these policies, whose colour jitter leaves grey pixels grey: the luma weights sum to 1).
    """

    accepts_keep_uint8 = True  # lets SegmentationDataset detect the uint8 fast path

    def __init__(self, augment: BatchAugment, *, keep_uint8: bool = False, channel_independent: bool = True) -> None:
        self.augment = augment
        self.keep_uint8 = bool(keep_uint8)
        self.channel_independent = bool(channel_independent)
        self._generator: torch.Generator | None = None

    def set_random_seed(self, seed: int) -> None:
        self._generator = torch.Generator().manual_seed(int(seed))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_generator"] = None  # generators do not pickle; workers are seeded per item
        return state

    def __call__(self, *, image: np.ndarray, mask: np.ndarray | None = None,
                 keep_uint8: bool | None = None) -> dict[str, Any]:
        keep = self.keep_uint8 if keep_uint8 is None else bool(keep_uint8)
        img = np.asarray(image)
        is_u8 = img.dtype == np.uint8
        if not is_u8 and img.dtype != np.float32:
            img = img.astype(np.float32)
        if img.ndim == 2:
            img = img[:, :, None]
        gen = self._generator
        if gen is None:
            gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,)).item()))
        params = self.augment.draw(1, gen)
        m_np = None if mask is None else np.asarray(mask)
        if img.shape[2] <= 4:
            out_img, mo = apply_cv2(self.augment, params, np.ascontiguousarray(img),
                                    None if m_np is None else np.ascontiguousarray(_cv2_mask(m_np)))
        else:
            out_img, mo = self._apply_torch(img, m_np, params)
        if is_u8 and not keep:
            res = np.empty(out_img.shape, np.float32)
            np.multiply(out_img, np.float32(1 / 255), out=res, dtype=np.float32)  # as to_model_channels scales
            out_img = res
        out: dict[str, Any] = {"image": np.ascontiguousarray(out_img)}
        if mo is not None:
            out["mask"] = np.ascontiguousarray(mo if (is_u8 and keep) else mo.astype(np.int64))
        return out

    def _apply_torch(self, img: np.ndarray, mask: np.ndarray | None, params: AugmentParams
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        with warnings.catch_warnings():  # read-only (memory-mapped) arrays: nothing here writes to them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(img).permute(2, 0, 1)[None]
            m = None
            if mask is not None:
                if mask.dtype not in _TORCH_MASK_DTYPES:
                    mask = mask.astype(np.uint8 if mask.dtype == np.bool_ else np.int64)
                m = torch.from_numpy(np.ascontiguousarray(mask))[None]
        y, mo = self.augment.apply(x, m, params)
        return y[0].permute(1, 2, 0).numpy(), None if mo is None else mo[0].numpy()

    def __repr__(self) -> str:
        return f"SegTransform({self.augment!r}, keep_uint8={self.keep_uint8})"


def train_transform(
    size: int | Sequence[int],
    strength: Literal["paper", "strong", "none"] = "paper",
) -> SegTransform:
    """Training augmentation at the model size.

    ``"paper"``: resize, horizontal/vertical flips, random 90-degree rotation (square sizes only: a
    rotation would swap h and w otherwise), a small affine (scale 0.9-1.1, rotate +-15 degrees, shift
    +-6.25%, p=0.5) and colour jitter (brightness/contrast/saturation 0.2, hue 0.02, p=0.5), the usual
    recipe of HRMedSeg/QTSeg-style training. ``"strong"`` widens affine and jitter and adds an elastic
    deformation (mean displacement ~1% of the size, p=0.3) for small data sets. ``"none"`` is
    :func:`eval_transform`. Masks are always warped with NEAREST interpolation and filled with 0
    (background) where the affine moves the image out of frame. The ops and their parameters:
    :mod:`hrmedseg.data.augment`.
    """
    h, w = as_hw(size)
    if strength == "none":
        return eval_transform((h, w))
    if strength not in ("paper", "strong"):
        raise ValueError(f"strength must be 'paper', 'strong' or 'none', got {strength!r}")
    return SegTransform(BatchAugment((h, w), strength))


def eval_transform(size: int | Sequence[int] | None) -> SegTransform:
    """Deterministic resize to the model size (image area/bilinear, mask nearest); ``None`` keeps the size."""
    return SegTransform(BatchAugment(None if size is None else as_hw(size), "none"))


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
    h, w = as_hw(size)
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
