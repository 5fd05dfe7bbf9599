"""Training-curve picture from metrics.csv."""
from __future__ import annotations

import csv
import io
from pathlib import Path


def plot_training_curves(csv_path: Path, png_path: Path) -> None:
    from .._optional import require
    matplotlib = require("matplotlib", feature="the training-curve plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ..atomic import atomic_write_bytes

    rows = list(csv.DictReader(open(csv_path)))
    if not rows:
        return
    ep = [int(r["epoch"]) for r in rows]

    def col(name: str) -> tuple[list[int], list[float]]:
        pts = [(e, float(r[name])) for e, r in zip(ep, rows) if r.get(name) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, style in (("train_loss", "-"), ("val_loss", "--")):
        x, y = col(name)
        if x:
            ax1.plot(x, y, style, marker="o", ms=2.5, label=name.replace("_", " "))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for name in ("val_dice", "val_iou"):
        x, y = col(name)
        if x:
            ax2.plot(x, y, marker="o", ms=2.5, label=name.replace("_", " ") + " (%)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation score (%)")
    if ax2.lines:
        ax2.legend()
    else:
        ax2.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=ax2.transAxes)
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(Path(csv_path).parent.name)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())
