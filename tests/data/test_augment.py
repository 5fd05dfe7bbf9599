"""Tests for hrmedseg.data.augment: every op against an independent numpy/scipy/OpenCV reference,
seeding and per-sample probabilities."""
from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from hrmedseg.data.augment import (
    POLICIES,
    AugmentParams,
    BatchAugment,
    add_gaussian_noise,
    adjust_brightness,
    adjust_contrast,
    adjust_gamma,
    adjust_hue,
    adjust_saturation,
    affine_matrices,
    batch_generator,
    crop,
    elastic_field,
    gaussian_blur,
    item_seed,
    warp,
)
from hrmedseg.data.transforms import train_transform


def _smooth(b: int, c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Image-like float images (B, C, H, W) in [0, 1] (smooth, so interpolation differences stay small)."""
    rng = np.random.default_rng(seed)
    x = rng.random((b, c, h, w))
    return np.clip(ndimage.gaussian_filter(x, (0, 0, 2, 2)) * 3 - 1, 0, 1).astype(np.float32)


def _labels(b: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((b, h, w), np.uint8)
    for i in range(b):
        m[i][(yy - h / 2 - i) ** 2 + (xx - w / 3) ** 2 < (h / 4) ** 2] = 1
        m[i, h // 8: h // 3, w // 2: w - w // 8 + i] = 2
    return m


def _off(aug: BatchAugment, n: int, **fields) -> AugmentParams:
    """Parameters of n samples with every op off, then ``fields`` set."""
    p = BatchAugment(aug.size, replace(aug.policy, hflip_p=0, vflip_p=0, rot90_p=0, affine_p=0, elastic_p=0,
                                       jitter_p=0)).draw(n, torch.Generator().manual_seed(0))
    if aug.policy.elastic_p and p.noise is None:
        p.noise = aug.draw(n, torch.Generator().manual_seed(0)).noise
    for k, v in fields.items():
        setattr(p, k, v)
    return p


# ----------------------------------------------------------------------------- geometry
def test_flips_and_rot90_are_exact_numpy() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 3, 20, 20), dtype=np.uint8)
    mask = rng.integers(0, 5, (8, 20, 20), dtype=np.uint8)
    hf = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0], dtype=torch.bool)
    vf = torch.tensor([0, 0, 1, 1, 0, 1, 0, 1], dtype=torch.bool)
    k = torch.tensor([0, 0, 0, 1, 2, 3, 1, 3])
    aug = BatchAugment(20, "paper")
    img_t = torch.from_numpy(img.copy())
    y, m = aug.apply(img_t, torch.from_numpy(mask), _off(aug, 8, hflip=hf, vflip=vf, rot90=k))
    assert np.array_equal(img_t.numpy(), img)  # the input is left alone
    for b in range(8):
        ref_i, ref_m = img[b], mask[b]
        if hf[b]:
            ref_i, ref_m = ref_i[..., ::-1], ref_m[..., ::-1]
        if vf[b]:
            ref_i, ref_m = ref_i[..., ::-1, :], ref_m[::-1]
        ref_i, ref_m = np.rot90(ref_i, int(k[b]), axes=(1, 2)), np.rot90(ref_m, int(k[b]))
        assert np.array_equal(y[b].numpy(), ref_i) and np.array_equal(m[b].numpy(), ref_m), b


def _albumentations_matrix(sx: float, sy: float, angle: float, tx: float, ty: float, h: int, w: int) -> np.ndarray:
    """The former pipeline's affine (scale, rotate, translate about the pixel centre), built in numpy."""
    cx, cy = w / 2 - 0.5, h / 2 - 0.5
    r = np.deg2rad(angle % 360)
    to0 = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]])
    sc = np.diag([sx, sy, 1.0])
    rot = np.array([[np.cos(r), np.sin(r), 0], [-np.sin(r), np.cos(r), 0], [0, 0, 1]])
    back = np.array([[1, 0, cx + tx], [0, 1, cy + ty], [0, 0, 1]])
    return back @ rot @ sc @ to0


def _scipy_warp(img: np.ndarray, fwd: np.ndarray, order: int) -> np.ndarray:
    """Reference warp: output(x, y) = input(M^-1 (x, y)), scipy in (row, col) order, zero outside."""
    inv = np.linalg.inv(fwd)
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    m = swap @ inv @ swap  # (row, col) coordinates
    return ndimage.affine_transform(img, m[:2, :2], offset=m[:2, 2], order=order, mode="grid-constant", cval=0)


def test_affine_matches_scipy_affine_transform() -> None:
    h, w = 40, 56
    img = _smooth(3, 2, h, w)
    mask = _labels(3, h, w)
    scale = torch.tensor([[0.9, 1.1], [1.25, 0.8], [1.0, 1.0]])
    angle = torch.tensor([13.0, -28.0, 90.0])
    shift = torch.tensor([[3.0, -2.0], [-5.0, 4.0], [0.0, 0.0]])
    mats = affine_matrices(scale, angle, shift, h, w)
    for b in range(3):
        ref = _albumentations_matrix(*scale[b].tolist(), float(angle[b]), *shift[b].tolist(), h, w)
        np.testing.assert_allclose(mats[b].numpy(), ref, atol=1e-12)
    y, m = warp(torch.from_numpy(img), torch.from_numpy(mask), mats)
    for b in range(3):
        for c in range(2):
            ref = _scipy_warp(img[b, c].astype(np.float64), mats[b].numpy(), order=1)
            np.testing.assert_allclose(y[b, c].numpy(), ref, atol=2e-5)
        ref_m = _scipy_warp(mask[b], mats[b].numpy(), order=0)
        assert m.dtype == torch.uint8 and set(m[b].unique().tolist()) <= {0, 1, 2}
        assert (m[b].numpy() == ref_m).mean() > 0.995  # nearest ties (x.5) may round either way


def test_affine_through_the_pipeline_matches_cv2_warp_affine() -> None:
    """The policy's affine on a uint8 image equals cv2.warpAffine with the same matrix (5-bit weights)."""
    h = w = 48
    img = (_smooth(1, 3, h, w)[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    aug = BatchAugment(h, "paper")
    p = _off(aug, 1, affine=torch.tensor([True]), scale=torch.tensor([[1.05, 0.93]]), angle=torch.tensor([-11.0]),
             shift=torch.tensor([[2.0, -3.0]]))
    y, _ = aug.apply(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous(), None, p)
    mat = affine_matrices(p.scale, p.angle, p.shift, h, w)[0].numpy()
    ref = cv2.warpAffine(img, mat[:2], (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    diff = np.abs(y[0].permute(1, 2, 0).numpy().astype(int) - ref.astype(int))
    assert diff.mean() < 0.3 and diff.max() <= 3


def _cv2_reference_field(noise: np.ndarray, h: int, w: int, alpha: float, sigma: float) -> np.ndarray:
    k = max(1, int(sigma // 4))
    out = []
    for c in noise / np.sqrt(2 * np.log(2 * h * w)):
        blurred = ndimage.gaussian_filter(c.astype(np.float64), sigma / k, mode="mirror", truncate=4.0)
        out.append(cv2.resize(blurred.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC) * (alpha / k))
    return np.stack(out)


def test_elastic_field_matches_blur_and_bicubic_reference() -> None:
    h = w = 200
    alpha, sigma = 0.0053 * h * h, 0.04 * h   # the strong policy's: k = 2
    k = max(1, int(sigma // 4))
    noise = torch.randn(2, 2, -(-h // k), -(-w // k), generator=torch.Generator().manual_seed(1))
    field = elastic_field(noise, h, w, alpha, sigma)
    for b in range(2):
        ref = _cv2_reference_field(noise[b].numpy(), h, w, alpha, sigma)
        rms = np.sqrt((ref ** 2).mean())
        assert np.abs(field[b].numpy() - ref).max() < 1e-3 * rms


def test_elastic_field_has_the_full_resolution_statistics() -> None:
    """The coarse-grid field has the displacement RMS and correlation length of the full-resolution
    model (white noise blurred with sigma at full size, times alpha) in the image interior."""
    size, margin = 256, 64
    alpha, sigma = 0.0053 * size * size, 0.04 * size
    gen = torch.Generator().manual_seed(0)
    k = int(sigma // 4)
    stats = {"coarse": [], "full": []}
    for _ in range(12):
        coarse = elastic_field(torch.randn(1, 2, size // k, size // k, generator=gen), size, size, alpha, sigma)[0]
        full_noise = torch.randn(2, size, size, generator=gen).numpy() / np.sqrt(2 * np.log(2 * size * size))
        full = np.stack([cv2.GaussianBlur(c, (0, 0), sigma) * alpha for c in full_noise])
        for name, d in (("coarse", coarse.numpy()), ("full", full)):
            d = d[:, margin:-margin, margin:-margin]
            stats[name].append((np.sqrt(np.mean(d ** 2)), np.mean(d[0][:, :-5] * d[0][:, 5:]) / np.mean(d[0] ** 2)))
    c, f = np.mean(stats["coarse"], 0), np.mean(stats["full"], 0)
    assert c[0] == pytest.approx(f[0], rel=0.2) and c[1] == pytest.approx(f[1], abs=0.05)


def test_elastic_warp_matches_map_coordinates_and_keeps_labels() -> None:
    h, w = 64, 64
    img = _smooth(1, 3, h, w)
    mask = _labels(1, h, w)
    noise = torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(2))
    disp = elastic_field(noise, h, w, 0.0053 * h * h * 3, 0.04 * h)
    y, m = warp(torch.from_numpy(img), torch.from_numpy(mask), None, disp)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coords = np.stack([yy + disp[0, 1].numpy(), xx + disp[0, 0].numpy()])
    for c in range(3):
        ref = ndimage.map_coordinates(img[0, c].astype(np.float64), coords, order=1, mode="grid-constant", cval=0)
        np.testing.assert_allclose(y[0, c].numpy(), ref, atol=2e-5)
    assert set(m.unique().tolist()) <= {0, 1, 2} and not torch.equal(m, torch.from_numpy(mask))
    ref_m = ndimage.map_coordinates(mask[0], coords, order=0, mode="grid-constant", cval=0)
    assert (m[0].numpy() == ref_m).mean() > 0.995


def test_elastic_with_zero_noise_is_identity() -> None:
    aug = BatchAugment(32, "strong")
    img = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    mask = torch.from_numpy(_labels(2, 32, 32))
    p = _off(aug, 2, elastic=torch.tensor([True, True]))
    p.noise = torch.zeros_like(p.noise)
    y, m = aug.apply(img, mask, p)
    assert torch.equal(y, img) and torch.equal(m, mask)


def test_affine_and_elastic_compose_into_one_warp() -> None:
    """Both on: the affine output warped by the field (two-step reference), within interpolation."""
    h = w = 64
    img = _smooth(1, 1, h, w, seed=3)
    mats = affine_matrices(torch.tensor([[1.1, 0.95]]), torch.tensor([20.0]), torch.tensor([[3.0, 1.0]]), h, w)
    disp = elastic_field(torch.randn(1, 2, 64, 64, generator=torch.Generator().manual_seed(4)), h, w, 60.0, 2.56)
    y, _ = warp(torch.from_numpy(img), None, mats, disp)
    step1 = _scipy_warp(img[0, 0].astype(np.float64), mats[0].numpy(), order=1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    ref = ndimage.map_coordinates(step1, [yy + disp[0, 1].numpy(), xx + disp[0, 0].numpy()], order=1,
                                  mode="grid-constant", cval=0)
    diff = np.abs(y[0, 0].numpy() - ref)
    assert diff.mean() < 0.01 and np.median(diff) < 0.005  # one interpolation instead of two


def test_crop_is_exact_slicing() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 2, 30, 40), dtype=np.uint8)
    mask = rng.integers(0, 4, (3, 30, 40), dtype=np.uint8)
    top, left = torch.tensor([0, 5, 12]), torch.tensor([0, 17, 22])
    y, m = crop(torch.from_numpy(img), torch.from_numpy(mask), top, left, (18, 18))
    for b in range(3):
        t, l_ = int(top[b]), int(left[b])
        assert np.array_equal(y[b].numpy(), img[b, :, t:t + 18, l_:l_ + 18])
        assert np.array_equal(m[b].numpy(), mask[b, t:t + 18, l_:l_ + 18])
    with pytest.raises(ValueError, match="leaves"):
        crop(torch.from_numpy(img), None, torch.tensor([13, 0, 0]), left, (18, 18))


def test_resize_is_area_down_bilinear_up_and_nearest_for_masks() -> None:
    img = (_smooth(1, 3, 40, 60)[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    mask = _labels(1, 40, 60)[0]
    for size in ((20, 30), (32, 45), (50, 75)):
        aug = BatchAugment(size, "none")
        y, m = aug.apply(torch.from_numpy(img).permute(2, 0, 1)[None].contiguous(), torch.from_numpy(mask)[None],
                         _off(aug, 1))
        interp = cv2.INTER_AREA if size[0] < 40 else cv2.INTER_LINEAR
        ref = cv2.resize(img, size[::-1], interpolation=interp)
        assert np.abs(y[0].permute(1, 2, 0).numpy().astype(int) - ref.astype(int)).max() <= 1
        ref_m = cv2.resize(mask, size[::-1], interpolation=cv2.INTER_NEAREST_EXACT)
        assert np.array_equal(m[0].numpy(), ref_m)


# ----------------------------------------------------------------------------- pixel ops
def test_brightness_contrast_saturation_gamma_match_the_formulas() -> None:
    x = _smooth(2, 3, 16, 20)
    f = np.array([0.7, 1.3], np.float64).reshape(2, 1, 1, 1)
    xd = x.astype(np.float64)
    grey = 0.299 * xd[:, 0:1] + 0.587 * xd[:, 1:2] + 0.114 * xd[:, 2:3]
    t, ft = torch.from_numpy(x), torch.tensor([0.7, 1.3])
    np.testing.assert_allclose(adjust_brightness(t.clone(), ft).numpy(), np.clip(xd * f, 0, 1), atol=1e-6)
    mean = grey.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(adjust_contrast(t.clone(), ft).numpy(), np.clip(xd * f + mean * (1 - f), 0, 1), atol=1e-6)
    np.testing.assert_allclose(adjust_saturation(t.clone(), ft).numpy(), np.clip(xd * f + grey * (1 - f), 0, 1),
                               atol=1e-6)
    np.testing.assert_allclose(adjust_gamma(t, ft).numpy(), xd ** f, atol=1e-6)
    one = torch.from_numpy(x[:, :1])
    np.testing.assert_allclose(adjust_contrast(one, ft).numpy(),
                               np.clip(xd[:, :1] * f + xd[:, :1].mean(axis=(1, 2, 3), keepdims=True) * (1 - f), 0, 1),
                               atol=1e-6)
    assert torch.equal(adjust_saturation(one, ft), one)


@pytest.mark.parametrize("shift", [-0.5, -0.05, 0.02, 0.3])
def test_hue_matches_opencv_float_hsv(shift: float) -> None:
    x = _smooth(1, 3, 24, 24, seed=5)[0].transpose(1, 2, 0).copy()
    hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] + shift * 360.0, 360.0)
    ref = np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 1)
    got = adjust_hue(torch.from_numpy(x).permute(2, 0, 1)[None], shift)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    grey = torch.from_numpy(np.repeat(x[None, None, :, :, 0], 3, axis=1))
    torch.testing.assert_close(adjust_hue(grey, shift), grey, rtol=0, atol=1e-6)  # grey stays grey


def test_blur_matches_scipy_and_noise_is_seeded() -> None:
    x = _smooth(3, 2, 30, 30, seed=6)
    y = gaussian_blur(torch.from_numpy(x), torch.tensor([0.0, 1.5, 3.0]))
    assert torch.equal(y[0], torch.from_numpy(x[0]))
    for b, s in ((1, 1.5), (2, 3.0)):
        ref = ndimage.gaussian_filter(x[b].astype(np.float64), (0, s, s), mode="mirror", truncate=4.0)
        np.testing.assert_allclose(y[b].numpy(), ref, atol=1e-5)
    flat = torch.full((2, 1, 64, 64), 0.5)
    n1 = add_gaussian_noise(flat, torch.tensor([0.0, 0.05]), torch.Generator().manual_seed(0))
    n2 = add_gaussian_noise(flat, torch.tensor([0.0, 0.05]), torch.Generator().manual_seed(0))
    assert torch.equal(n1, n2) and torch.equal(n1[0], flat[0])
    assert float((n1[1] - 0.5).std()) == pytest.approx(0.05, rel=0.05)


# ----------------------------------------------------------------------------- randomness
def test_seeded_determinism_and_item_seeds() -> None:
    aug = BatchAugment(32, "strong")
    img = torch.from_numpy((_smooth(4, 3, 40, 40) * 255).round().astype(np.uint8))
    mask = torch.from_numpy(_labels(4, 40, 40))
    a = aug.apply(img, mask, aug.draw(4, batch_generator(1, 2, 3)))
    b = aug.apply(img, mask, aug.draw(4, batch_generator(1, 2, 3)))
    c = aug.apply(img, mask, aug.draw(4, batch_generator(1, 2, 4)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])
    seeds = [item_seed(7, 1, i) for i in range(4)]
    assert seeds == [(7 * 1_000_003 + 7_919 + i) % (2**31 - 1) for i in range(4)]
    batched = aug.apply(img, mask, aug.draw_items(seeds))
    # the per-item CPU pipeline (OpenCV, uint8 rounding after each colour op) with the same seeds
    t = train_transform(32, "strong")
    for i, s in enumerate(seeds):
        t.set_random_seed(s)
        one = t(image=img[i].permute(1, 2, 0).numpy(), mask=mask[i].numpy(), keep_uint8=True)
        assert np.array_equal(one["mask"], batched[1][i].numpy())
        diff = np.abs(one["image"].astype(int) - batched[0][i].permute(1, 2, 0).numpy().astype(int))
        assert diff.max() <= 3 and diff.mean() < 0.6


def test_per_sample_probabilities_match_the_policies() -> None:
    """Each op fires with its probability, independently per sample, and ranges are the policy's (the
    former albumentations parameters): statistics over 4000 draws with a fixed seed."""
    n = 4000
    paper = BatchAugment(64, "paper").draw(n, torch.Generator().manual_seed(0))
    tol = 3 * np.sqrt(0.25 / n) + 1e-3
    for sel, p in ((paper.hflip, 0.5), (paper.vflip, 0.5), (paper.affine, 0.5), (paper.jitter_on, 0.5),
                   (paper.rot90 > 0, 0.375), (paper.hflip & paper.vflip, 0.25), (paper.hflip & paper.affine, 0.25)):
        assert abs(sel.double().mean().item() - p) < tol
    assert torch.bincount(paper.rot90[paper.rot90 > 0]).tolist()[1:] == pytest.approx([n * 0.125] * 3, rel=0.12)
    assert 0.9 <= paper.scale.min() < 0.902 and 1.098 < paper.scale.max() <= 1.1
    assert abs(torch.corrcoef(paper.scale.T)[0, 1].item()) < 0.05  # x and y scale independent
    assert -15 <= paper.angle.min() < -14.9 and 14.9 < paper.angle.max() <= 15
    assert paper.shift.abs().max() == 3 and torch.equal(paper.shift, paper.shift.trunc())  # int(u * 64), |u| < 0.0625
    assert 0.8 <= paper.jitter[:, :3].min() and paper.jitter[:, :3].max() <= 1.2 and paper.jitter[:, 3].abs().max() <= 0.02
    assert sorted(paper.order[0].tolist()) == [0, 1, 2, 3] and len({tuple(o) for o in paper.order.tolist()}) == 24
    strong = BatchAugment(64, "strong").draw(n, torch.Generator().manual_seed(1))
    for sel, p in ((strong.affine, 0.7), (strong.elastic, 0.3), (strong.jitter_on, 0.7)):
        assert abs(sel.double().mean().item() - p) < tol
    assert 0.75 <= strong.scale.min() < 0.76 and strong.angle.abs().max() > 29.9 and strong.shift.abs().max() == 6
    assert (BatchAugment((48, 64), "paper").draw(200, torch.Generator()).rot90 == 0).all()  # non-square


def test_policy_output_statistics_on_images() -> None:
    """Applied to a batch: the fraction of horizontally flipped samples and the affine's area change."""
    aug = BatchAugment(32, replace(POLICIES["paper"], vflip_p=0, rot90_p=0, affine_p=0, jitter_p=0))
    img = torch.zeros(400, 1, 32, 32, dtype=torch.uint8)
    img[..., :8] = 255   # a bar on the left
    y, _ = aug.apply(img, None, aug.draw(400, torch.Generator().manual_seed(3)))
    flipped = (y[..., -1] == 255).all(dim=-1).flatten()
    assert abs(flipped.double().mean().item() - 0.5) < 0.08
    aff = BatchAugment(64, replace(POLICIES["strong"], hflip_p=0, vflip_p=0, rot90_p=0, affine_p=1.0, jitter_p=0,
                                   elastic_p=0))
    sq = torch.zeros(200, 1, 64, 64, dtype=torch.uint8)
    sq[..., 22:42, 22:42] = 1
    p = aff.draw(200, torch.Generator().manual_seed(4))
    _, m = aff.apply(sq, sq[:, 0], p)
    area = m.flatten(1).sum(1).double() / 400
    expected = (p.scale[:, 0] * p.scale[:, 1]).double()
    assert (area - expected).abs().max() < 0.15  # nearest on a 20x20 square


def test_uint8_and_float_inputs_agree() -> None:
    aug = BatchAugment(40, "strong")
    u8 = torch.from_numpy((_smooth(4, 3, 48, 48) * 255).round().astype(np.uint8))
    mask = torch.from_numpy(_labels(4, 48, 48))[:, None]
    p = aug.draw(4, torch.Generator().manual_seed(9))
    a, ma = aug.apply(u8, mask, p)
    b, mb = aug.apply(u8.float() / 255, mask.long(), p)
    assert a.dtype == torch.uint8 and b.dtype == torch.float32 and ma.shape == (4, 1, 40, 40)
    assert ma.dtype == torch.uint8 and mb.dtype == torch.long and torch.equal(ma.long(), mb)
    assert (a.float() / 255 - b).abs().max() <= 0.5 / 255 + 1e-6


def test_bad_input_is_refused() -> None:
    aug = BatchAugment(16, "paper")
    p = aug.draw(2, torch.Generator())
    with pytest.raises(ValueError, match="B, C, H, W"):
        aug.apply(torch.zeros(3, 16, 16, dtype=torch.uint8), None, p)
    with pytest.raises(ValueError, match="parameter sets"):
        aug.apply(torch.zeros(3, 3, 16, 16, dtype=torch.uint8), None, p)
    with pytest.raises(ValueError, match="do not match"):
        aug.apply(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.zeros(2, 8, 8, dtype=torch.uint8), p)
    with pytest.raises(ValueError, match="policy"):
        BatchAugment(16, "light")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    aug = BatchAugment(64, "strong")
    img = torch.from_numpy((_smooth(8, 3, 72, 72) * 255).round().astype(np.uint8))
    mask = torch.from_numpy(_labels(8, 72, 72))
    p = aug.draw_items(range(8))
    a, ma = aug.apply(img, mask, p)
    b, mb = aug.apply(img.cuda(), mask.cuda(), p)
    assert (a.int() - b.cpu().int()).abs().max() <= 1 and (ma != mb.cpu()).float().mean() < 1e-3


@pytest.mark.parametrize("mode", ["imagenet", "minmax", "none"])
def test_keep_float_output_normalises_like_the_uint8_one(mode: str) -> None:
    from hrmedseg.data.gpu_normalize import normalize_batch, normalize_unit_batch

    aug = BatchAugment(32, "paper")
    img = torch.from_numpy((_smooth(4, 3, 32, 32) * 255).round().astype(np.uint8))
    p = aug.draw(4, torch.Generator().manual_seed(5))
    u8, _ = aug.apply(img, None, p)
    f, _ = aug.apply(img, None, p, keep_float=True)
    assert f.dtype == torch.float32 and torch.equal((f * 255).round().to(torch.uint8), u8)
    got, ref = normalize_unit_batch(f.clone(), mode), normalize_batch(u8, mode)
    scale = 1 / 0.224 if mode == "imagenet" else (2.0 if mode == "minmax" else 1.0)  # smallest ImageNet std
    assert (got - ref).abs().max() <= 0.5 / 255 * scale + 1e-6
    with pytest.raises(TypeError):
        normalize_unit_batch(u8, mode)
