"""Batched joint image/mask augmentation on torch tensors, the same code on CPU and CUDA.

Why this module exists: per-image augmentation in DataLoader workers bounds training at high
resolution. Here a whole uint8 batch ``(B, C, H, W)`` with its integer masks is augmented at once on
whatever device it is on. This module is the one definition of the policies, their random
parameters, the affine matrices and the elastic fields; the per-item pipelines of
:mod:`hrmedseg.data.transforms` (DataLoader workers, CPU training) execute the same parameters with
OpenCV kernels, which are faster than torch on one image in one thread (tests hold the two
executors to the same output within uint8 rounding).

Why plain torch and no augmentation library: kornia is not available from this project's package
index, torchvision does not work with the project's torch build, and the policies need only a few
ops: exact flips / 90-degree rotations, one ``F.grid_sample`` per batch for the affine and elastic
warps together (bilinear image with zero fill; masks gathered at the nearest pixel, background 0),
and element-wise colour jitter. Each op runs only on the samples it applies to (index sets known on
the CPU, no Python loop over the batch). Gamma, blur, noise and crops are provided as batched
functions for recipes; the existing policies do not use them.

Randomness: every random value comes from :meth:`BatchAugment.draw`, which takes a
``torch.Generator`` (CPU) and consumes a fixed amount of it per sample whatever is applied, so a
given seed gives the same parameters on every device. :meth:`BatchAugment.draw_items` draws each
sample from its own seed (:func:`item_seed` of (seed, epoch, index), the scheme of the training
sampler), so a batch augmented on the GPU gets exactly the parameters the CPU per-item path draws
for the same items, and a resumed run sees exactly the batches it would have seen. Parameters live
on the CPU; which samples an op touches is known there, so applying a batch needs no device sync.

Policies (:data:`POLICIES`, the parameters of the former albumentations pipelines):

* ``"paper"``: horizontal and vertical flip (p=0.5 each), 90-degree rotation by k in {0..3} (p=0.5,
  square sizes only), affine (p=0.5: scale x and y independently in 0.9-1.1, rotation +-15 degrees,
  shift +-6.25 % of width/height truncated to whole pixels, about the image centre), colour jitter
  (p=0.5: brightness, contrast, saturation factors in [0.8, 1.2], hue shift +-0.02 of a turn, in a
  random order per image).
* ``"strong"``: affine p=0.7 with scale 0.75-1.25, rotation +-30 degrees, shift +-10 %; elastic
  (p=0.3, alpha = 0.0053 s², sigma = 0.04 s for s = min(h, w)); jitter p=0.7 with 0.3 / hue 0.05.
* ``"none"``: only the resize.

Compared with the former albumentations pipeline the affine and elastic warps are composed into one
sampling (one interpolation instead of two), and here uint8 images are rounded once at the end
instead of after every colour op; both differ from the former output only within
interpolation/rounding.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

__all__ = ["LUMA_WEIGHTS", "AugmentPolicy", "POLICIES", "AugmentParams", "BatchAugment", "item_seed",
           "batch_generator", "as_hw", "affine_matrices", "elastic_field", "dihedral_steps", "warp", "resize",
           "adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue", "adjust_gamma",
           "gaussian_blur", "add_gaussian_noise", "crop"]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as OpenCV's RGB2GRAY


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch (the training sampler's scheme)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(index)) % (2**31 - 1)


def batch_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A CPU generator for one batch, fixed by (seed, epoch, step): for :meth:`BatchAugment.draw`."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch) * 104_729 + int(step)) % (2**63 - 1))


@dataclass(frozen=True)
class AugmentPolicy:
    """Probabilities and ranges of one augmentation recipe (see the module docstring)."""

    name: str
    hflip_p: float = 0.0
    vflip_p: float = 0.0
    rot90_p: float = 0.0
    affine_p: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    rotate: tuple[float, float] = (0.0, 0.0)          # degrees
    translate: tuple[float, float] = (0.0, 0.0)       # fraction of width / height
    elastic_p: float = 0.0
    elastic_alpha: float = 0.0                         # alpha = elastic_alpha * s * s
    elastic_sigma: float = 0.0                         # sigma = elastic_sigma * s (pixels)
    jitter_p: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0


POLICIES: dict[str, AugmentPolicy] = {
    "none": AugmentPolicy("none"),
    "paper": AugmentPolicy("paper", hflip_p=0.5, vflip_p=0.5, rot90_p=0.5, affine_p=0.5, scale=(0.9, 1.1),
                           rotate=(-15.0, 15.0), translate=(-0.0625, 0.0625), jitter_p=0.5,
                           brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
    "strong": AugmentPolicy("strong", hflip_p=0.5, vflip_p=0.5, rot90_p=0.5, affine_p=0.7, scale=(0.75, 1.25),
                            rotate=(-30.0, 30.0), translate=(-0.1, 0.1), elastic_p=0.3, elastic_alpha=0.0053,
                            elastic_sigma=0.04, jitter_p=0.7, brightness=0.3, contrast=0.3, saturation=0.3,
                            hue=0.05),
}


@dataclass
class AugmentParams:
    """Per-sample parameters of one batch (CPU tensors, leading dimension B).

    ``rot90`` is the number of counter-clockwise quarter turns (0 where not applied); ``scale`` (B, 2)
    is (x, y); ``shift`` (B, 2) whole pixels (x, y); ``jitter`` (B, 4) the brightness, contrast and
    saturation factors and the hue shift (turns); ``order`` (B, 4) the order of the jitter ops;
    ``noise`` (B, 2, hc, wc) the coarse elastic noise (None without elastic).
    """

    hflip: torch.Tensor
    vflip: torch.Tensor
    rot90: torch.Tensor
    affine: torch.Tensor
    scale: torch.Tensor
    angle: torch.Tensor
    shift: torch.Tensor
    elastic: torch.Tensor
    jitter_on: torch.Tensor
    jitter: torch.Tensor
    order: torch.Tensor
    noise: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.hflip.shape[0])

    @staticmethod
    def cat(parts: Sequence[AugmentParams]) -> AugmentParams:
        out = {}
        for f in fields(AugmentParams):
            vals = [getattr(p, f.name) for p in parts]
            out[f.name] = None if vals[0] is None else torch.cat(vals)
        return AugmentParams(**out)


def as_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as (h, w): an int is square; both must be positive."""
    if isinstance(size, numbers.Integral):
        h = w = size
    else:
        h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


# --------------------------------------------------------------------------- geometry
def _area_weights(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) box-filter weights: output i averages input [i s, (i + 1) s), s = n_in / n_out,
    each input pixel weighted by its overlap (OpenCV's INTER_AREA when shrinking)."""
    s = n_in / n_out
    lo = torch.arange(n_out, dtype=torch.float64)[:, None] * s
    left = torch.arange(n_in, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(lo + s, left + 1) - torch.maximum(lo, left)).clamp_(min=0)
    return (overlap / s).float().to(device)


def resize(images: torch.Tensor, masks: torch.Tensor | None, size: tuple[int, int]
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Float images ``(B, C, H, W)`` to ``size``: area average when shrinking (anti-aliased, fractional
    overlaps as OpenCV's INTER_AREA), bilinear (half-pixel centres) when enlarging; integer masks
    ``(B, H, W)`` by exact nearest."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images, masks
    (h, w), (oh, ow) = images.shape[-2:], size
    if oh * ow < h * w:
        wh, ww = _area_weights(h, oh, images.device), _area_weights(w, ow, images.device)
        images = torch.einsum("oh,bchw,pw->bcop", wh, images, ww)
    else:
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    if masks is not None:
        rows, cols = _nearest_exact_index(h, oh).to(masks.device), _nearest_exact_index(w, ow).to(masks.device)
        masks = masks[:, rows][:, :, cols]
    return images, masks


def _nearest_exact_index(n_in: int, n_out: int) -> torch.Tensor:
    """Source pixel of each output pixel, about floor((i + 0.5) n_in / n_out), in OpenCV's 16.16
    fixed point (INTER_NEAREST_EXACT), so masks resize to the very pixels the per-item path picks."""
    step = ((n_in << 16) + n_out // 2) // n_out
    start = step // 2 - step % 2
    return ((torch.arange(n_out, dtype=torch.int64) * step + start) >> 16).clamp_(max=n_in - 1)


def affine_matrices(scale: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Forward 3x3 matrices (B, 3, 3), float64, in pixel coordinates (x right, y down): scale, then
    rotate by ``angle`` degrees, about the image centre ((w - 1) / 2, (h - 1) / 2), then shift by
    ``shift`` pixels, the convention of cv2.warpAffine's matrix (output = input at M^-1 p)."""
    b = scale.shape[0]
    cx, cy = w / 2 - 0.5, h / 2 - 0.5
    rad = torch.deg2rad(angle.double())
    cos, sin = torch.cos(rad), torch.sin(rad)
    sx, sy = scale[:, 0].double(), scale[:, 1].double()
    m = torch.zeros(b, 3, 3, dtype=torch.float64)
    m[:, 0, 0], m[:, 0, 1] = cos * sx, sin * sy
    m[:, 1, 0], m[:, 1, 1] = -sin * sx, cos * sy
    m[:, 0, 2] = cx + shift[:, 0].double() - (m[:, 0, 0] * cx + m[:, 0, 1] * cy)
    m[:, 1, 2] = cy + shift[:, 1].double() - (m[:, 1, 0] * cx + m[:, 1, 1] * cy)
    m[:, 2, 2] = 1.0
    return m


def _gauss_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    # OpenCV's kernel size for float images with ksize (0, 0): 2 * round(4 sigma) + 1.
    radius = max(1, int(round(4.0 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float().to(device)


def _blur_2d(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every plane of ``x`` (N, C, H, W), reflect-101 border."""
    k = _gauss_kernel(sigma, x.device)
    r = (k.numel() - 1) // 2
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    rh, rw = min(r, h - 1), min(r, w - 1)   # a reflected border cannot exceed the plane
    y = F.conv2d(F.pad(y, (rw, rw, 0, 0), mode="reflect"), k[r - rw: r + rw + 1].view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, rh, rh), mode="reflect"), k[r - rh: r + rh + 1].view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def _elastic_coarse(h: int, w: int, sigma: float) -> tuple[int, int, int]:
    k = max(1, int(sigma // 4))
    return k, -(-h // k), -(-w // k)


def elastic_field(noise: torch.Tensor, h: int, w: int, alpha: float, sigma: float) -> torch.Tensor:
    """Displacements (B, 2, h, w) in pixels (dx, dy) from coarse white noise (B, 2, hc, wc).

    The field of elastic deformation: normal noise scaled by 1 / sqrt(2 ln(2 h w)) (the expected
    maximum of the full-size field, which albumentations divides by), Gaussian-smoothed with
    ``sigma`` and times ``alpha`` — computed on a grid k = sigma // 4 times coarser (smoothing
    sigma / k, amplitude alpha / k, which keeps the variance of smoothed white noise) and
    resized bicubically to (h, w).
    """
    k, hc, wc = _elastic_coarse(h, w, sigma)
    if tuple(noise.shape[-2:]) != (hc, wc):
        raise ValueError(f"elastic noise is {tuple(noise.shape[-2:])}, expected {(hc, wc)} for {h}x{w}")
    field = _blur_2d(noise.float() / math.sqrt(2.0 * math.log(2 * h * w)), sigma / k)
    if (hc, wc) != (h, w):
        field = F.interpolate(field, size=(h, w), mode="bicubic", align_corners=False)
    return field * (alpha / k)


def _normalised_theta(matrices: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid`` thetas (B, 2, 3) sampling the input at M^-1 p, in align_corners=False
    coordinates (pixel x <-> (2 x + 1) / w - 1)."""
    n = torch.tensor([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0], [0.0, 0.0, 1.0]],
                     dtype=torch.float64)
    return (n @ torch.linalg.inv(matrices.double()) @ torch.linalg.inv(n))[:, :2]


def _nearest(masks: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour sampling of integer masks (B, H, W) at ``grid`` (B, h, w, 2), 0 outside: the
    pixels ``grid_sample(mode="nearest")`` picks (round half to even), gathered in the mask's dtype."""
    b, h, w = masks.shape
    ix = ((grid[..., 0] + 1) * w - 1).mul_(0.5).round_()
    iy = ((grid[..., 1] + 1) * h - 1).mul_(0.5).round_()
    inside = (ix >= 0) & (ix <= w - 1) & (iy >= 0) & (iy <= h - 1)
    flat = (iy.clamp_(0, h - 1) * w + ix.clamp_(0, w - 1)).long().flatten(1)
    out = masks.reshape(b, h * w).gather(1, flat).view(grid.shape[:3])
    return out.masked_fill_(~inside, 0)


def warp(images: torch.Tensor, masks: torch.Tensor | None, matrices: torch.Tensor | None,
         displacement: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Warp float images (B, C, H, W) and integer masks (B, H, W) with one sampling grid.

    Output pixel p shows the elastic-displaced point q = p + displacement(p) of the affine output,
    i.e. the input at M^-1 q (``matrices`` forward, (B, 3, 3), or None for identity). Points outside
    the frame are 0 (image: ``grid_sample`` bilinear with zero border; mask: nearest, background 0).
    """
    b, c, h, w = images.shape
    dev = images.device
    theta = None if matrices is None else _normalised_theta(matrices, h, w).float().to(dev)
    if displacement is None:
        if theta is None:
            return images, masks
        grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    else:
        eye = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], device=dev)
        base = F.affine_grid(eye, [1, c, h, w], align_corners=False)                 # pixel centres
        scale = torch.tensor([2.0 / w, 2.0 / h], device=dev)
        grid = base + displacement.permute(0, 2, 3, 1).float() * scale                # q, normalised
        if theta is not None:
            outside = (grid.abs() > 1).any(dim=-1, keepdim=True)                       # off the affine output
            grid = torch.einsum("bij,bhwj->bhwi", theta[:, :, :2], grid) + theta[:, None, None, :, 2]
            grid = grid.masked_fill(outside, -4.0)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out, None if masks is None else _nearest(masks, grid)


def crop(images: torch.Tensor, masks: torch.Tensor | None, top: torch.Tensor, left: torch.Tensor,
         size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-sample crops of ``size`` at (``top``, ``left``) (B,) integer offsets, by exact gathering."""
    b, c, h, w = images.shape
    ch, cw = size
    top, left = top.long().to(images.device), left.long().to(images.device)
    if ((top < 0) | (left < 0) | (top + ch > h) | (left + cw > w)).any():
        raise ValueError(f"crop {size} at the given offsets leaves the {h}x{w} image")
    rows = (top[:, None] + torch.arange(ch, device=images.device))[:, :, None]    # (B, ch, 1)
    cols = (left[:, None] + torch.arange(cw, device=images.device))[:, None, :]   # (B, 1, cw)
    idx = (rows * w + cols).reshape(b, 1, ch * cw)
    out = images.reshape(b, c, h * w).gather(2, idx.expand(b, c, ch * cw)).reshape(b, c, ch, cw)
    if masks is None:
        return out, None
    return out, masks.reshape(b, h * w).gather(1, idx[:, 0]).reshape(b, ch, cw)


# --------------------------------------------------------------------------- pixel ops (float [0, 1])
def _per_sample(v: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    v = torch.as_tensor(v, dtype=x.dtype).to(x.device)
    return v.reshape(-1, 1, 1, 1) if v.ndim else v


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Luma (B, 1, H, W) of RGB images; the channel mean for other channel counts."""
    if x.shape[1] == 3:
        return LUMA_WEIGHTS[0] * x[:, 0:1] + LUMA_WEIGHTS[1] * x[:, 1:2] + LUMA_WEIGHTS[2] * x[:, 2:3]
    return x.mean(dim=1, keepdim=True)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """x * factor, clipped to [0, 1]."""
    return (x * _per_sample(factor, x)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """x * factor + mean * (1 - factor), mean = the image's mean luma; clipped to [0, 1]."""
    f = _per_sample(factor, x)
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    return (x * f + mean * (1 - f)).clamp_(0.0, 1.0)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Blend with the per-pixel luma: x * factor + grey * (1 - factor), clipped; RGB only."""
    if x.shape[1] != 3:
        return x
    f = _per_sample(factor, x)
    return (x * f + _grey(x) * (1 - f)).clamp_(0.0, 1.0)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor | float) -> torch.Tensor:
    """Rotate the hue of RGB images by ``shift`` turns (HSV, as OpenCV's float conversion); others unchanged.

    Value and saturation stay, so with v = max, d = max - min each channel is
    v - d * clamp(min(k, 4 - k), 0, 1), k = (n + h / 60) mod 6, n = 5, 3, 1 for R, G, B.
    """
    if x.shape[1] != 3:
        return x
    r, g, b = x.unbind(dim=1)
    v = torch.maximum(torch.maximum(r, g), b)   # element-wise: much faster than a reduction over dim 1
    d = v - torch.minimum(torch.minimum(r, g), b)
    # hue / 60 degrees: sector offset 0, 2, 4 for a maximum in R, G, B (first wins), plus (next - previous) / d
    is_r, is_g = v == r, v == g
    num = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))
    sector = torch.where(is_r, 0.0, torch.where(is_g, 2.0, 4.0))
    sh = torch.as_tensor(shift, dtype=x.dtype).to(x.device)
    hue = num.div_(d.clamp_min(1e-12)).add_(sector).add_(6.0 * (sh.view(-1, 1, 1) if sh.ndim else sh))
    hue = torch.remainder(hue, 6.0)[:, None]                                     # [0, 6), one channel
    k = hue + torch.tensor([5.0, 3.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = torch.where(k >= 6.0, k - 6.0, k)                                        # (n + h) mod 6
    k = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return k.mul_(d[:, None]).neg_().add_(v[:, None]).clamp_(0.0, 1.0)


def adjust_gamma(x: torch.Tensor, gamma: torch.Tensor | float) -> torch.Tensor:
    """x ** gamma for images in [0, 1]."""
    return x.clamp(0.0, 1.0).pow(_per_sample(gamma, x))


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Gaussian blur with a per-sample ``sigma`` (pixels; 0 leaves the sample), reflect-101 border."""
    sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0]).cpu()
    out = x.clone()
    for s in sig.unique().tolist():  # one grouped blur per distinct sigma
        if s <= 0:
            continue
        idx = (sig == s).nonzero().squeeze(1).to(x.device)
        out[idx] = _blur_2d(x[idx], s)
    return out


def add_gaussian_noise(x: torch.Tensor, std: torch.Tensor | float, generator: torch.Generator) -> torch.Tensor:
    """x + N(0, std²) per pixel (noise drawn on the CPU from ``generator``), clipped to [0, 1]."""
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)
    return (x + noise * _per_sample(std, x)).clamp_(0.0, 1.0)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


# --------------------------------------------------------------------------- the batched pipeline
def dihedral_steps(params: AugmentParams, square: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample (horizontal flip, vertical flip, quarter turns) equal to the policy's horizontal flip,
    then vertical flip, then ``rot90`` counter-clockwise turns, with at most one flip and one turn:
    on square images a vertical flip is a horizontal one plus a half turn."""
    if not square:
        return params.hflip, params.vflip, torch.zeros_like(params.rot90)
    return params.hflip ^ params.vflip, torch.zeros_like(params.vflip), (params.rot90 + 2 * params.vflip.long()) % 4


_ALL = slice(None)


def _idx(sel: torch.Tensor, device: torch.device) -> torch.Tensor | slice | None:
    """Indices of the selected samples (None: none; a full slice: all, no gather/scatter needed)."""
    if bool(sel.all()):
        return _ALL
    i = sel.nonzero().squeeze(1)  # a CPU tensor: no device sync
    return i.to(device, non_blocking=True) if i.numel() else None


def _put(t: torch.Tensor, i: torch.Tensor | slice, value: torch.Tensor) -> torch.Tensor:
    """``t`` with the samples ``i`` replaced by ``value`` (``value`` itself when ``i`` is all of them)."""
    if isinstance(i, slice):
        return value
    t[i] = value
    return t


class BatchAugment:
    """The augmentation of one policy at one output ``size`` ((h, w) or int; None keeps the input size).

    Per batch on the device (``indices`` the dataset indices of the batch, ``epoch`` its epoch)::

        aug = BatchAugment(size, "strong")
        params = aug.draw_items([item_seed(seed, epoch, i) for i in indices])   # CPU, no device sync
        x, y = aug.apply(images_uint8.to(dev), masks.to(dev), params, keep_float=True)
        x = normalize_unit_batch(x, mode)           # hrmedseg.data.gpu_normalize

    ``apply`` takes uint8 or float (values in [0, 1]) images (B, C, H, W) and integer masks (B, H, W)
    or (B, 1, H, W), resizes them to ``size`` and returns images of the input dtype (uint8 rounded
    once; float32 in [0, 1] with ``keep_float``) and masks of the input dtype and shape. The input
    tensors are left unchanged. Draws depend only on the seeds, so a resumed run, another world size
    or the per-item CPU path (seeded with the same :func:`item_seed`) get the same parameters.
    """

    def __init__(self, size: int | Sequence[int] | None, policy: str | AugmentPolicy = "paper") -> None:
        self.size = None if size is None else as_hw(size)
        if isinstance(policy, str):
            if policy not in POLICIES:
                raise ValueError(f"unknown augmentation policy {policy!r}; use one of {sorted(POLICIES)}")
            policy = POLICIES[policy]
        if self.size is not None and self.size[0] != self.size[1] and policy.rot90_p:
            policy = replace(policy, rot90_p=0.0)  # a quarter turn would swap h and w
        if (policy.elastic_p or policy.affine_p) and self.size is None:
            raise ValueError(f"policy {policy.name!r} needs a fixed output size (its shifts and fields are in pixels)")
        self.policy = policy

    def __repr__(self) -> str:
        return f"BatchAugment(size={self.size}, policy={self.policy.name!r})"

    def elastic_alpha_sigma(self) -> tuple[float, float]:
        """The elastic field's alpha and sigma (pixels) at this size."""
        s = min(self.size) if self.size else 0
        return self.policy.elastic_alpha * s * s, self.policy.elastic_sigma * s

    def draw(self, n: int, generator: torch.Generator) -> AugmentParams:
        """Parameters of ``n`` samples from ``generator`` (CPU); the same amount is consumed whatever applies."""
        p = self.policy
        u = torch.rand(n, 16, generator=generator, dtype=torch.float64)
        order = torch.rand(n, 4, generator=generator).argsort(dim=1)
        noise = None
        if p.elastic_p > 0:
            _, hc, wc = _elastic_coarse(*self.size, self.elastic_alpha_sigma()[1])
            noise = torch.randn(n, 2, hc, wc, generator=generator)

        def between(col: int, lo: float, hi: float) -> torch.Tensor:
            return lo + (hi - lo) * u[:, col]

        def factor(col: int, amount: float) -> torch.Tensor:
            return between(col, max(0.0, 1.0 - amount), 1.0 + amount)

        rot_on = u[:, 2] < p.rot90_p
        affine = u[:, 4] < p.affine_p
        h, w = self.size if self.size else (0, 0)
        shift = torch.stack([between(8, *p.translate) * w, between(9, *p.translate) * h], 1).trunc()
        return AugmentParams(
            hflip=u[:, 0] < p.hflip_p, vflip=u[:, 1] < p.vflip_p,
            rot90=torch.where(rot_on, (u[:, 3] * 4).long().clamp(max=3), torch.zeros(n, dtype=torch.long)),
            affine=affine, scale=torch.stack([between(5, *p.scale), between(6, *p.scale)], 1),
            angle=between(7, *p.rotate), shift=shift, elastic=u[:, 10] < p.elastic_p,
            jitter_on=u[:, 11] < p.jitter_p,
            jitter=torch.stack([factor(12, p.brightness), factor(13, p.contrast), factor(14, p.saturation),
                                between(15, -p.hue, p.hue)], 1),
            order=order, noise=noise)

    def draw_items(self, seeds: Sequence[int]) -> AugmentParams:
        """Parameters drawn per sample, each from its own seed (e.g. :func:`item_seed`)."""
        return AugmentParams.cat([self.draw(1, torch.Generator().manual_seed(int(s))) for s in seeds])

    def apply(self, images: torch.Tensor, masks: torch.Tensor | None, params: AugmentParams, *,
              keep_float: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a batch with ``params`` (see the class docstring). ``keep_float=True`` returns the
        images as float32 in [0, 1] without the final rounding of uint8 inputs (to be normalised on
        the device by :func:`hrmedseg.data.gpu_normalize.normalize_unit_batch`)."""
        if images.ndim != 4:
            raise ValueError(f"expected images (B, C, H, W), got shape {tuple(images.shape)}")
        if len(params) != images.shape[0]:
            raise ValueError(f"{len(params)} parameter sets for a batch of {images.shape[0]}")
        in_dtype, dev = images.dtype, images.device
        m, mask_shape = None, None
        if masks is not None:
            mask_shape = masks.shape
            m = masks[:, 0] if masks.ndim == 4 else masks
            if m.shape[0] != images.shape[0] or m.shape[-2:] != images.shape[-2:]:
                raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
            m = m.clone()
        x = images.clone() if in_dtype == torch.uint8 else images.float().clone()
        if self.size is not None and tuple(x.shape[-2:]) != self.size:
            x, m = resize(self._to_float(x), m, self.size)
        h, w = x.shape[-2:]
        # flips and quarter turns before the widening to float: 4x fewer bytes to move for uint8
        x, m = self._dihedral(x, m, params, h, w, dev)
        x, m = self._warp(self._to_float(x), m, params, h, w, dev)
        x = self._jitter(x, params, dev)
        if in_dtype == torch.uint8 and not keep_float:
            x = x.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
        elif x.dtype != in_dtype and not keep_float:
            x = x.to(in_dtype)
        if m is not None and mask_shape is not None and len(mask_shape) == 4:
            m = m[:, None]
        return x, m

    def __call__(self, images: torch.Tensor, masks: torch.Tensor | None = None, *,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Draw from ``generator`` (the global torch generator's next seed if None) and apply."""
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,)).item()))
        return self.apply(images, masks, self.draw(images.shape[0], generator))

    @staticmethod
    def _to_float(x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).mul_(1.0 / 255.0) if x.dtype == torch.uint8 else x

    @staticmethod
    def _dihedral(x: torch.Tensor, m: torch.Tensor | None, params: AugmentParams, h: int, w: int,
                  dev: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        flip, vflip, turns = dihedral_steps(params, h == w)
        steps = [(flip, lambda t: t.flip(-1)), (vflip, lambda t: t.flip(-2))]
        steps += [(turns == k, lambda t, k=k: t.rot90(k, dims=(-2, -1))) for k in (1, 2, 3)]
        for sel, fn in steps:
            i = _idx(sel, dev)
            if i is not None:
                x = _put(x, i, fn(x[i]))
                if m is not None:
                    m = _put(m, i, fn(m[i]))
        return x, m

    def _warp(self, x: torch.Tensor, m: torch.Tensor | None, params: AugmentParams, h: int, w: int,
              dev: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        elastic = params.elastic if self.policy.elastic_p > 0 else torch.zeros_like(params.elastic)
        warped = params.affine | elastic
        i = _idx(warped, dev)
        if i is None:
            return x, m
        sel = warped.nonzero().squeeze(1)
        mats = affine_matrices(params.scale[sel], params.angle[sel], params.shift[sel], h, w)
        mats[~params.affine[sel]] = torch.eye(3, dtype=torch.float64)
        disp = None
        if elastic.any():
            alpha, sigma = self.elastic_alpha_sigma()
            noise = params.noise[sel] * elastic[sel].view(-1, 1, 1, 1)  # zero noise: no displacement
            disp = elastic_field(noise.to(dev), h, w, alpha, sigma)
        xi, mi = warp(x[i], None if m is None else m[i], mats if params.affine[sel].any() else None, disp)
        x = _put(x, i, xi)
        if m is not None and mi is not None:
            m = _put(m, i, mi)
        return x, m

    def _jitter(self, x: torch.Tensor, params: AugmentParams, dev: torch.device) -> torch.Tensor:
        on = params.jitter_on
        if not on.any():
            return x
        f = params.jitter
        for slot in range(4):
            for op_i, op in enumerate(_JITTER_OPS):
                sel = on & (params.order[:, slot] == op_i)
                neutral = 0.0 if op_i == 3 else 1.0
                sel &= f[:, op_i] != neutral
                i = _idx(sel, dev)
                if i is not None:
                    x = _put(x, i, op(x[i], f[sel, op_i].float()))
        return x
