"""Sliding-window inference: equality with resize mode at the model size, blending weights,
full-size output for a large image with bounded memory, lazy TIFF windows."""
import tracemalloc

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import hrmedseg
from hrmedseg.inference import Segmenter
from hrmedseg.inference.tiling import (TiffSource, gaussian_weights, gaussian_weights_1d,
                                       predict_tiled, tile_starts)

TILE = 128


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return hrmedseg.create_model("hrmedseg_lean", embed_dim=24, depth=2, num_heads=(6, 6, 6),
                                 neck_dim=32, decoder_heads=4, decoder_mlp_dim=32,
                                 img_size=TILE).eval()


def _image(h, w, c=3, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    base = 128 + 100 * np.sin(yy / 37.0) * np.cos(xx / 23.0)
    img = base[..., None] + rng.normal(0, 10, (h, w, c))
    return np.clip(img, 0, 255).astype(np.uint8).squeeze()


def test_tile_equals_resize_at_model_size(tiny):
    img = _image(TILE, TILE)
    a = Segmenter(tiny, device="cpu").predict(img)
    b = Segmenter(tiny, device="cpu", mode="tile").predict(img)
    assert b.probabilities.shape == a.probabilities.shape == (1, TILE, TILE)
    np.testing.assert_allclose(b.probabilities, a.probabilities, atol=1e-6)
    assert (a.labels == b.labels).mean() > 0.999


def test_tile_starts_cover_with_overlap():
    for size, tile, ov in [(3000, 128, 0.25), (129, 128, 0.5), (128, 128, 0.25), (50, 128, 0.25),
                           (1000, 256, 0.0)]:
        s = tile_starts(size, tile, ov)
        assert s[0] == 0
        if size > tile:
            assert s[-1] == size - tile
            steps = np.diff(s)
            assert steps.max() <= tile * (1 - ov) + 1          # at least the requested overlap
        else:
            assert s == [0]
    with pytest.raises(ValueError):
        tile_starts(100, 10, 1.0)


def test_gaussian_weights_properties():
    w = gaussian_weights((128, 96))
    assert w.shape == (128, 96) and w.dtype == np.float32
    assert w.min() > 0 and np.isclose(w.max(), 1.0, atol=1e-3)
    np.testing.assert_allclose(w, w[::-1, :], atol=1e-7)      # symmetric
    np.testing.assert_allclose(w, w[:, ::-1], atol=1e-7)
    g = gaussian_weights_1d(128)
    assert np.all(np.diff(g[:64]) >= 0) and np.all(np.diff(g[64:]) <= 0)   # peak in the middle
    # sigma = tile / 8: at one sigma from the centre the weight is exp(-1/2)
    x = np.arange(128) - 63.5
    i = np.argmin(np.abs(np.abs(x) - 16))
    peak = np.exp(-0.5 * (0.5 / 16) ** 2)                      # max-normalised
    assert abs(g[i] - np.exp(-0.5 * (x[i] / 16) ** 2) / peak) < 1e-6
    # constant tile predictions blend to exactly that constant
    img = np.zeros((300, 200), np.uint8)
    res = predict_tiled(lambda b: torch.full((b.shape[0], 1, 64, 64), 0.7), img, 64,
                        overlap=0.5, tile_batch=3)
    np.testing.assert_allclose(res.probabilities, 1 / (1 + np.exp(-0.7)), atol=1e-5)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_large_image_full_size_and_bounded_memory(tiny):
    h, w = 3000, 2500
    img = _image(h, w, c=1)
    seg = Segmenter(tiny, device="cpu", mode="tile", tile_batch=8, overlap=0.0)
    tracemalloc.start()
    pred = seg.predict(img)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert pred.labels.shape == (h, w) and pred.probabilities.shape == (1, h, w)
    assert pred.probabilities.dtype == np.float32
    assert 0 <= pred.probabilities.min() and pred.probabilities.max() <= 1
    assert np.array_equal(pred.labels, (pred.probabilities[0] > 0.5).astype(np.uint8))
    # host (numpy) memory: the accumulator + labels + small per-batch/per-band buffers
    accumulator = h * w * 4 + h * w
    assert peak < accumulator + 16e6, (peak, accumulator)


def test_largest_tensor_does_not_grow_with_image(tiny):
    seg = Segmenter(tiny, device="cpu", mode="tile", tile_batch=4, overlap=0.25)
    largest = []
    for h, w in [(200, 150), (900, 700)]:
        probe = _LargestTensor()
        with probe:
            seg.predict(_image(h, w, c=1))
        largest.append(probe.largest)
    assert largest[1] == largest[0], largest          # bounded by the tile batch only
    assert largest[1] < 900 * 700 * 3 * 4


def test_accumulator_float16(tiny):
    img = _image(300, 260)
    a = Segmenter(tiny, device="cpu", mode="tile").predict(img)
    b = Segmenter(tiny, device="cpu", mode="tile", accum_dtype="float16").predict(img)
    assert b.probabilities.dtype == np.float16
    np.testing.assert_allclose(b.probabilities.astype(np.float32), a.probabilities, atol=3e-3)


def test_lazy_tiff_reads_only_windows(tiny, tmp_path, monkeypatch):
    tifffile = pytest.importorskip("tifffile")
    n = 6000
    img = np.zeros((n, n), np.uint8)
    img[::7] = 200
    img[:, ::11] = 90
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, img, tile=(256, 256), compression="zlib")
    expected_window = img[1000:1128, 5900:6000].copy()
    del img

    def no_full_read(*a, **k):
        raise AssertionError("the whole TIFF page was read")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_full_read)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_full_read)
    monkeypatch.setattr(tifffile, "imread", no_full_read)
    src = TiffSource(path, prefer="chunks")
    assert src.backend == "chunks" and src.shape == (n, n)
    np.testing.assert_array_equal(src.read(1000, 1128, 5900, 6000), expected_window)
    assert src.chunks_decoded == 2
    src.close()

    # a whole prediction through the lazy path: only a sub-sampled grid of tiles would be slow,
    # so segment with a trivial logits function and check that every chunk is decoded ~once
    src = TiffSource(path, prefer="chunks")
    res = predict_tiled(lambda b: b[:, :1] * 0 + 1.0, src, 512, in_chans=1, overlap=0.0,
                        tile_batch=4)
    assert res.labels.shape == (n, n) and res.labels.all()
    assert src.chunks_decoded <= 1.2 * (-(-n // 256)) ** 2
    src.close()


def test_predict_file_lazy_tiff(tiny, tmp_path, monkeypatch):
    tifffile = pytest.importorskip("tifffile")
    img = _image(400, 300)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, img, tile=(64, 64))
    seg = Segmenter(tiny, device="cpu", mode="tile", tile_batch=4)
    ref = seg.predict(img)
    monkeypatch.setattr(tifffile.TiffPage, "asarray",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("full read")))
    got = seg.predict_file(path)
    assert got.source == str(path)
    np.testing.assert_allclose(got.probabilities, ref.probabilities, atol=1e-6)
    assert got.image.shape == img.shape


def test_uncompressed_tiff_uses_memmap(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    img = _image(500, 400, c=1)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, img)
    with TiffSource(path) as src:
        assert src.backend == "memmap"
        np.testing.assert_array_equal(src.read(10, 200, 30, 390), img[10:200, 30:390])


def test_bad_mode_rejected(tiny):
    with pytest.raises(ValueError, match="mode"):
        Segmenter(tiny, device="cpu", mode="sliding")


def test_compile_option_wraps_the_model_and_keeps_predictions(tiny, monkeypatch):
    """``compile=`` hands the mode to torch.compile (stubbed: no compiler run on the CPU suite);
    the CUDA-graph mode marks each call a new step and copies the logits out."""
    seen, marks = [], []

    def fake_compile(model, mode=None):
        seen.append(mode)
        return model
    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    img = _image(TILE, TILE)
    ref = Segmenter(tiny, device="cpu").predict(img)
    seg = Segmenter(tiny, device="cpu", compile="reduce-overhead")
    out = seg.predict(img)
    assert seen == ["reduce-overhead"] and marks
    np.testing.assert_array_equal(out.labels, ref.labels)
    with pytest.raises(ValueError, match="compile must be one of"):
        Segmenter(tiny, device="cpu", compile="fastest")


@pytest.mark.parametrize("tile, overlap, tile_batch", [((64, 48), 0.25, 4), ((64, 48), 0.5, 5),
                                                       ((40, 40), 0.25, 3)])
def test_stitched_identity_model_equals_direct_computation(tile, overlap, tile_batch):
    """A model whose logits are the first input channel (normalize "none") makes the tiled
    result computable without tiles: sigmoid (one class) or softmax over (c, -c) (two classes)
    of the image itself, wherever the tile sits. A non-square image of several tiles, with
    overlap and Gaussian blending, in batches that do not divide the tile count."""
    h, w = 150, 230
    rng = np.random.default_rng(1)
    img = rng.uniform(-4, 4, (h, w, 2)).astype(np.float32)
    rows, cols = tile_starts(h, tile[0], overlap), tile_starts(w, tile[1], overlap)
    n_tiles = len(rows) * len(cols)
    assert len(rows) > 2 and len(cols) > 2 and n_tiles % tile_batch != 0
    res = predict_tiled(lambda b: b[:, :1].clone(), img, tile, in_chans=2, normalize="none",
                        overlap=overlap, tile_batch=tile_batch)
    assert res.num_tiles == n_tiles
    want = 1.0 / (1.0 + np.exp(-img[..., 0].astype(np.float64)))
    np.testing.assert_allclose(res.probabilities[0], want, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(res.labels, (want > 0.5).astype(np.uint8))

    two = predict_tiled(lambda b: torch.cat([b[:, :1], -b[:, :1]], 1), img, tile, in_chans=2,
                        num_classes=2, normalize="none", overlap=overlap, tile_batch=tile_batch)
    e = np.exp(2 * img[..., 0].astype(np.float64))
    np.testing.assert_allclose(two.probabilities[0], e / (1 + e), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(two.labels, (img[..., 0] < 0).astype(np.uint8))
