"""``hrmedseg export MODEL -o model.onnx [--size 1024] [--dynamic]``: ONNX export."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_verb
    p = add_verb(sub, "export", help="export a model to ONNX (torch dynamo exporter)")
    p.add_argument("model", help="run folder, saved model folder, or name[:pretrained-tag]")
    p.add_argument("-o", "--out", type=Path, required=True, help="output .onnx file")
    p.add_argument("--size", type=int, nargs="+",
                   help="example input size H [W] (default: as trained); the fixed size without --dynamic")
    p.add_argument("--dynamic", action="store_true",
                   help="symbolic batch, height and width (any size the model takes)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--check", action="store_true",
                   help="run the exported graph in onnxruntime and compare with PyTorch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..inference.export import export_onnx, onnx_available

    if not onnx_available():
        raise UserError("ONNX export needs onnx and onnxscript: pip install onnx onnxscript onnxruntime")
    if args.size and len(args.size) not in (1, 2):
        raise UserError("--size takes H or H W")
    size = None if not args.size else (args.size * 2 if len(args.size) == 1 else args.size)
    if args.out.suffix.lower() != ".onnx":
        raise UserError(f"{args.out}: the output should be a .onnx file")
    path = export_onnx(args.model, args.out, size=size, dynamic=args.dynamic, opset=args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, "
          f"{'dynamic batch/height/width' if args.dynamic else 'static shape'})")
    if args.check:
        import numpy as np
        import torch
        from ..inference.export import OnnxSegmenter
        from ..inference.segmenter import _resolve_model
        net, _ = _resolve_model(args.model, torch.device("cpu"))
        sess = OnnxSegmenter(path)
        x = torch.randn(1, sess.in_chans, *sess.size)
        with torch.no_grad():
            ref = net.eval()(x).numpy()
        diff = float(np.abs(sess.logits(x).numpy() - ref).max())
        print(f"max |logits(onnxruntime) - logits(torch)| = {diff:.2e}")
    return 0
