"""ONNX export (dynamo exporter) with symbolic batch/height/width: parity with PyTorch at the
export size and at other sizes (the RoPE tables and positional encodings follow the grid inside
the graph), and OnnxSegmenter == Segmenter. Skipped when onnx/onnxscript/onnxruntime are absent."""
import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import hrmedseg  # noqa: E402
from hrmedseg.inference import Segmenter  # noqa: E402
from hrmedseg.inference.export import OnnxSegmenter, export_onnx, read_onnx_metadata  # noqa: E402

SIZE = 128


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    # the released layout (prompt encoder's dense PE + no-mask embedding) is the harder case
    model = hrmedseg.create_model("hrmedseg", embed_dim=24, depth=2, num_heads=(6, 6, 6),
                                  neck_dim=32, decoder_heads=4, decoder_mlp_dim=32,
                                  img_size=SIZE).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "tiny.onnx", dynamic=True)
    return model, path


@pytest.mark.parametrize("shape", [(1, 3, SIZE, SIZE), (2, 3, 192, 256), (1, 3, 64, 96)])
def test_logit_parity_dynamic_sizes(exported, shape):
    model, path = exported
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(x).numpy()
    out = sess.run(None, {"image": x.numpy()})[0]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 1e-3


def test_metadata_and_segmenter_parity(exported):
    model, path = exported
    meta = read_onnx_metadata(path)
    assert meta["size"] == [SIZE, SIZE] and meta["num_classes"] == 1 and meta["dynamic"]
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)
    for mode in ("resize", "tile"):
        a = Segmenter(model, device="cpu", mode=mode).predict(img)
        b = OnnxSegmenter(path, mode=mode, threads=1).predict(img)
        assert b.labels.shape == (300, 200)
        assert np.abs(a.probabilities - b.probabilities).max() < 1e-4
        assert (a.labels == b.labels).mean() > 0.999


def test_cli_export_static(tmp_path, capsys):
    from hrmedseg.cli.main import main

    torch.manual_seed(0)
    model = hrmedseg.create_model("hrmedseg_lean", embed_dim=24, depth=2, num_heads=(6, 6, 6),
                                  neck_dim=32, decoder_heads=4, decoder_mlp_dim=32, img_size=64)
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "m.onnx"
    assert main(["export", str(tmp_path / "m"), "-o", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert "static shape" in text and "max |logits" in text
    diff = float(text.split("=")[-1])
    assert diff < 1e-3
    assert main(["export", str(tmp_path / "m"), "-o", str(tmp_path / "m.txt")]) == 2
