"""The core install builds models and predicts without OpenCV, PyAV, FastAPI/uvicorn, matplotlib,
albumentations or MONAI; each feature that needs one says which extra installs it, in one line."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")
HEAVY = ["cv2", "av", "fastapi", "uvicorn", "starlette", "matplotlib", "albumentations", "monai",
         "SimpleITK", "segmentation_models_pytorch", "onnx", "onnxruntime", "onnxscript"]


def _run(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    code = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in HEAVY) + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}, timeout=300)


def test_import_pulls_no_optional_package(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import hrmedseg, sys; print(sorted(m for m in sys.modules "
                        "if m.split('.')[0] in {'cv2','av','fastapi','matplotlib','uvicorn',"
                        "'albumentations','monai'}))"],
                       capture_output=True, text=True, env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_core_builds_and_predicts_without_extras(tmp_path):
    r = _run("""
        import numpy as np
        import hrmedseg
        from hrmedseg.inference.segmenter import Segmenter
        from hrmedseg.data.io import read_image, write_mask_png
        hrmedseg.create_model('hrmedseg')
        seg = Segmenter('hrmedseg', device='cpu', size=64)
        img = np.zeros((80, 96, 3), np.uint8)
        img[20:50, 30:70] = 200
        pred = seg.predict_arrays([img])[0]
        write_mask_png('m.png', pred.labels)
        assert read_image('m.png').shape == (80, 96)
        print('ok')
    """, tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


FEATURES = [
    ("from hrmedseg.serve.app import create_app", "serve"),
    ("from hrmedseg.data.video import _av; _av('x.mp4')", "video"),
    ("from hrmedseg.training.curves import plot_training_curves; plot_training_curves('a.csv', 'a.png')", "train"),
    ("from hrmedseg.data.datasets import _resize_pair; import numpy as np; "
     "_resize_pair(np.zeros((9, 9), np.uint8), np.zeros((9, 9), np.uint8), (4, 4))", "train"),
    ("import hrmedseg; hrmedseg.create_model('unet')", "baselines"),
    ("from hrmedseg.data.volumes import read_volume; open('v.mha', 'wb').close(); read_volume('v.mha')", "medical"),
]


def test_missing_extra_is_one_line_naming_it(tmp_path):
    # one interpreter for all features (each start imports torch)
    r = _run("""
        FEATURES = %r
        for feature, _ in FEATURES:
            try:
                exec(feature)
                print("no error")
            except (ImportError, ValueError) as exc:   # readers wrap it as ImageReadError
                print(str(exc).replace("\\n", " | "))
    """ % (FEATURES,), tmp_path)
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0 and len(lines) == len(FEATURES), (r.stdout, r.stderr)
    for (feature, extra), line in zip(FEATURES, lines):
        assert f'pip install "hrmedseg[{extra}]"' in line and "|" not in line, (feature, line)


def test_serve_verb_without_fastapi_exits_2_naming_the_extra(tmp_path):
    r = _run("""
        from hrmedseg.cli.main import main
        sys.exit(main(['serve', 'hrmedseg', '--device', 'cpu']))
    """, tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\\n") == 0 and 'pip install "hrmedseg[serve]"' in r.stderr, r.stderr
