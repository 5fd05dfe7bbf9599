"""Evaluate a 2-D model on 3-D cases slice by slice: per case and per class Dice, IoU, HD, HD95 in
millimetres (voxel spacing), written like HER-Seg's Table 2 (one column per organ)."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from ..atomic import atomic_write_bytes, write_json_atomic
from ..data.volumes import check_label_matches, read_volume, write_label_volume
from ..inference.volume import predict_volume
from ..metrics.segmentation import EMPTY_MASK_POLICY
from ..metrics.volume import compute_volume_metrics, summarize_volumes, table2_report


def evaluate_volume_cases(segmenter: Any, cases: Sequence[Any], class_names: list[str] | None,
                          out_dir: Path | None = None, axis: int = 2, window: str = "abdomen",
                          batch_size: int = 8, hd: bool = True, progress: bool = True) -> dict[str, Any]:
    """``cases``: objects with ``case``, ``image``, ``label`` paths (nnU-Net raw 3-D layout)."""
    nc = segmenter.num_classes
    names = class_names or [str(i) for i in range(max(nc, 2))]
    rows: dict[str, dict[str, float]] = {}
    for c in tqdm(cases, desc="evaluate volumes", unit="case", disable=not progress):
        img, lab = read_volume(c.image), read_volume(c.label)
        check_label_matches(img, lab)
        pred = predict_volume(segmenter, img, axis=axis, window=window, batch_size=batch_size)
        rows[c.case] = compute_volume_metrics(pred, lab.data.astype("int64"), nc, img.spacing,
                                              class_names=names, hd=hd)
        if out_dir is not None:
            write_label_volume(Path(out_dir) / "predictions" / f"{c.case}.nii.gz", pred, like=img)
    organs = names[1:] if nc > 2 else [names[1] if len(names) > 1 else "1"]
    summary = {"n_cases": len(rows), "per_case": rows, "summary": summarize_volumes(rows.values()),
               "units": "dice/iou as fractions; hd/hd95 in millimetres (voxel spacing)",
               "empty_mask_policy": EMPTY_MASK_POLICY, "axis": axis, "window": window}
    if out_dir is not None:
        out = Path(out_dir)
        write_json_atomic(out / "summary.json", summary)
        atomic_write_bytes(out / "table2.md", table2_report(rows, organs).encode())
        keys = sorted({k for r in rows.values() for k in r})
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["case", *keys])
        for case, r in rows.items():
            w.writerow([case, *[f"{r[k]:.6g}" if k in r else "" for k in keys]])
        atomic_write_bytes(out / "per_case.csv", buf.getvalue().encode())
    summary["table2"] = table2_report(rows, organs)
    return summary
