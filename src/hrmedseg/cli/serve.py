"""``hrmedseg serve MODEL``: REST API + web page (FastAPI + uvicorn) on 127.0.0.1 by default."""
from __future__ import annotations

import argparse
import ipaddress
import os


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ._common import add_device_argument, add_verb
    p = add_verb(sub, "serve", help="serve a model over HTTP: REST API (/v1/segment, /docs) and a web page")
    p.add_argument("model", nargs="+", help="one or more: run folder, saved model folder, or name[:pretrained-tag]")
    p.add_argument("--host", default="127.0.0.1", help="bind address (other than loopback needs --token)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--token", default=None, help="bearer token required on every /v1 call (or env HRMEDSEG_TOKEN)")
    add_device_argument(p)
    p.add_argument("--size", type=int, nargs="+", help="model input size (default: as trained)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of the forward pass")
    p.add_argument("--max-upload-mb", type=float, default=64.0, help="largest accepted upload in MiB")
    p.add_argument("--max-pixels", type=int, default=64_000_000, help="largest accepted image in pixels")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a request waits for others to share its batch")
    p.add_argument("--max-batch", type=int, default=8, help="most requests batched into one forward")
    p.add_argument("--queue-size", type=int, default=64,
                   help="requests waiting beyond this are refused with 503")
    p.add_argument("--timeout", type=float, default=60.0, help="per-request timeout in seconds")
    p.add_argument("--compile", default="auto", choices=("auto", "off", "default"),
                   help="torch.compile the models; auto (default): on a GPU, models with a compile "
                        "parity record, without CUDA graphs (batch sizes follow the traffic)")
    p.add_argument("--cors-origin", action="append", default=None, help="allow this origin (CORS is off by default)")
    p.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ._common import device_arg
    args.device = device_arg(args.device)
    token = args.token or os.environ.get("HRMEDSEG_TOKEN") or None
    if not is_loopback(args.host) and not token:
        raise UserError(f"binding to {args.host} exposes the server beyond this machine: "
                         "set --token or HRMEDSEG_TOKEN")
    from .._optional import MissingExtraError, require
    try:
        uvicorn = require("uvicorn", extra="serve")
        from ..serve.app import create_app
    except MissingExtraError as exc:
        raise UserError(str(exc)) from None
    from ..inference.segmenter import Segmenter
    size = None if not args.size else (args.size * 2 if len(args.size) == 1 else args.size)
    sources = {}
    for m in args.model:
        try:
            seg = Segmenter(m, device=args.device, size=size, precision=args.precision)
        except TypeError:
            sources[m] = m  # create_app resolves models Segmenter cannot (SAM)
            continue
        # auto compiles without CUDA graphs (set_compile's auto_mode): the batch size follows
        # the traffic (1 ... --max-batch), and CUDA graphs record and keep memory for each size.
        seg.set_compile(None if args.compile == "off" else args.compile, auto_mode="default")
        sources[m] = seg
    app = create_app(sources, token=token, max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                     max_pixels=args.max_pixels, batch_wait_ms=args.batch_wait_ms, max_batch=args.max_batch,
                     queue_size=args.queue_size, timeout_s=args.timeout, device=args.device, size=size,
                     cors_origins=args.cors_origin)
    print(f"hrmedseg serve: http://{args.host}:{args.port}/ (API docs at /docs)"
          + (" — bearer token required" if token else ""), flush=True)
    from ..serve.app import configure_access_log
    configure_access_log()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
