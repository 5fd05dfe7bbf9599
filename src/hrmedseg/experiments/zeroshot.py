"""Zero-shot box-prompted segmentation with SAM's prompt encoder and mask decoder (SPEC "SAM
combination", HRMedSeg Table 4).

Protocol: one box prompt per connected component of the ground truth (tight box,
:func:`~hrmedseg.inference.prompts.boxes_from_mask`, 8-connectivity; every nonzero label is
foreground), SAM's prompt encoder and mask decoder unchanged from a SAM/MobileSAM checkpoint,
single-mask output per box, the masks of all boxes of an image united (per-pixel maximum of
the logits, threshold 0). The image encoder is either the teacher's own TinyViT
(``encoder="teacher"``, MobileSAM as released) or a distilled HRMedSeg student folder
(``RUN/student`` → HRMedSegSAM with that encoder and neck). An image whose ground truth is empty
gets no prompt and an empty prediction.

Metrics are :func:`~hrmedseg.metrics.segmentation.compute_metrics` (as ``hrmedseg evaluate``): at
the original resolution, and at the "model resolution" = the image resized so its longest side
is the SAM input size (before padding; ground truth resized nearest-neighbour). Output:
``per_image.csv``, ``summary.json`` and overlays, as ``hrmedseg evaluate`` writes them.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..evaluation.evaluate import nearest_resize, summarize_rows, write_results
from ..metrics.segmentation import compute_metrics

__all__ = ["build_zeroshot_model", "zeroshot_predict", "evaluate_zeroshot"]


def build_zeroshot_model(encoder: str, sam: str | None, size: int | None = None,
                         **sam_kwargs: Any):
    """The box-prompted SamModel for ``encoder`` = ``"teacher"`` (MobileSAM from the ``sam``
    checkpoint, all three parts) or a distilled HRMedSeg model folder (its encoder + neck as
    the image encoder; prompt encoder + mask decoder from ``sam``)."""
    from ..models._hub import CheckpointError, from_pretrained, read_config
    from ..models._registry import create_model
    from ..models.sam import HRMedSegImageEncoder, SamConfig, SamModel
    from ..models.sam_checkpoints import find_checkpoint, load_sam_checkpoint

    def sam_path() -> str:
        if sam is None:
            raise ValueError("a SAM checkpoint is needed (--sam mobile_sam.pt)")
        if Path(sam).is_file():
            return str(sam)
        found = find_checkpoint(sam)
        if found is None:
            raise FileNotFoundError(f"{sam}: SAM checkpoint not found")
        return str(found)

    if encoder == "teacher":
        return create_model("mobile_sam", pretrained=sam_path(), img_size=size or 1024, **sam_kwargs)
    folder = Path(encoder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{encoder}: --encoder must be 'teacher' or a distilled model "
                                f"folder (e.g. RUN/student)")
    cfg = read_config(folder)
    student = from_pretrained(folder)
    if not hasattr(student, "encoder") or not hasattr(student, "neck"):
        raise CheckpointError(f"{folder}: {cfg['architecture']} has no encoder/neck to use as "
                              f"SAM's image encoder")
    img = int(size or student.config.img_size[0])
    model = SamModel(SamConfig(img_size=img, encoder="custom", **sam_kwargs),
                     image_encoder=HRMedSegImageEncoder.from_model(student),
                     model_name="hrmedseg_sam")
    model.replace_image_encoder(model.image_encoder)
    load_sam_checkpoint(model, sam_path(), parts=("prompt_encoder", "mask_decoder"))
    return model


def _to_rgb255(img: np.ndarray) -> torch.Tensor:
    from ..data.io import to_model_channels
    arr = to_model_channels(img, 3)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)) * 255.0)


@torch.no_grad()
def zeroshot_predict(model: Any, images: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                     device: str | torch.device = "cpu", precision: str = "fp32",
                     min_area: int = 1) -> list[dict[str, Any]]:
    """Box-prompted logits for a batch of images of any sizes.

    Returns per image: ``boxes`` (N, 4) from the ground truth, ``logits`` (H, W) at the
    original resolution, ``logits_model`` (h, w) at the resized model resolution (united over
    the boxes; ``EMPTY_LOGIT`` with no box).
    """
    from ..inference.predictor import SamPredictor
    from ..inference.prompts import boxes_from_mask
    from ..models.sam import EMPTY_LOGIT

    predictor = SamPredictor(model)
    device = torch.device(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    xs, sizes, boxes, origs = [], [], [], []
    for img, gt in zip(images, gts):
        t = _to_rgb255(img).to(device)
        x, s = model.preprocess(t[None])
        xs.append(x)
        sizes.append(s)
        origs.append((int(t.shape[-2]), int(t.shape[-1])))
        b = np.asarray(boxes_from_mask(np.asarray(gt) != 0, min_area=min_area), dtype=np.float32)
        boxes.append(torch.from_numpy(b).reshape(-1, 4))
    with ctx:
        emb = model.image_embeddings(torch.cat(xs))
    counts = [int(b.shape[0]) for b in boxes]
    out: list[dict[str, Any]] = []
    low_all = None
    if sum(counts):
        flat = torch.cat([predictor.transform_boxes(b.to(device), o) for b, o in zip(boxes, origs)])
        index = torch.repeat_interleave(torch.arange(len(xs), device=device),
                                        torch.tensor(counts, device=device))
        with ctx:
            low_all, _ = model.decode(emb, boxes=flat, image_index=index, multimask_output=False)
        low_all = low_all.float()
    start = 0
    for i, (n, s, o) in enumerate(zip(counts, sizes, origs)):
        if n:
            low = low_all[start:start + n]
            full = predictor.postprocess_masks(low, s, o)[:, 0].amax(0)
            small = predictor.postprocess_masks(low, s, s)[:, 0].amax(0)
        else:
            full = torch.full(o, EMPTY_LOGIT, device=device)
            small = torch.full(s, EMPTY_LOGIT, device=device)
        start += n
        out.append({"boxes": boxes[i].numpy(), "logits": full.cpu(), "logits_model": small.cpu()})
    return out


def evaluate_zeroshot(model: Any, samples: Sequence[Any], out_dir: str | Path | None = None, *,
                      device: str = "auto", batch_size: int = 1, precision: str = "fp32",
                      hd: bool = True, overlays: int = 4, min_area: int = 1,
                      info: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Box-prompted zero-shot evaluation over ``samples`` (objects with stem, image_path,
    mask_path); writes ``per_image.csv``/``summary.json``/``overlays/`` into ``out_dir``."""
    from tqdm.auto import tqdm

    from ..data.io import ImageReadError, read_image, read_mask, write_image_png
    from ..inference.visualize import prediction_overlay

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device).eval()
    rows, rows_model = [], []
    indexed = list(enumerate(samples))
    bar = tqdm(total=len(indexed), desc="zeroshot", unit="img", disable=not progress)
    for start in range(0, len(indexed), max(1, batch_size)):
        chunk = indexed[start:start + max(1, batch_size)]
        imgs, gts = [], []
        for _, s in chunk:
            img, gt = read_image(s.image_path), read_mask(s.mask_path)
            if gt.shape != img.shape[:2]:
                raise ImageReadError(s.mask_path, f"mask is {gt.shape} but image is {img.shape[:2]}")
            imgs.append(img)
            gts.append((gt != 0).astype(np.uint8))
        preds = zeroshot_predict(model, imgs, gts, device=device, precision=precision,
                                 min_area=min_area)
        for (idx, s), img, gt, pr in zip(chunk, imgs, gts, preds):
            labels = (pr["logits"] > 0).numpy().astype(np.uint8)
            m = compute_metrics(labels, gt, 1, hd=hd)   # MAE from labels, as at the model size
            rows.append((idx, {"stem": s.stem, "height": gt.shape[0], "width": gt.shape[1],
                               "n_boxes": int(pr["boxes"].shape[0]), **m}))
            small = (pr["logits_model"] > 0).numpy().astype(np.uint8)
            mm = compute_metrics(small, nearest_resize(gt, small.shape), 1, hd=hd)
            rows_model.append((idx, {"stem": s.stem, **mm}))
            if out_dir is not None and idx < overlays:
                write_image_png(Path(out_dir) / "overlays" / f"{s.stem}.png",
                                prediction_overlay(img, labels, gt))
        bar.update(len(chunk))
    bar.close()
    summary = summarize_rows(rows, rows_model, [])
    summary["original_resolution"].pop("n_boxes", None)
    summary["n_boxes"] = int(sum(r["n_boxes"] for _, r in rows))
    summary["protocol"] = ("one tight box per 8-connected ground-truth component; SAM prompt "
                           "encoder + mask decoder unchanged; single-mask output; masks united "
                           "per image (max of logits > 0)")
    summary["sam_input_size"] = int(model.config.img_size)
    if info:
        summary.update(info)
    if out_dir is not None:
        write_results(Path(out_dir), rows, rows_model, summary)
    return summary
