"""Training-curve picture from metrics.csv: losses on the left, validation scores on the right."""
from __future__ import annotations

import csv
import io
from pathlib import Path

LOSS_WORDS = ("loss", "mse")
# Validation Dice/IoU columns: fractions in metrics.csv, percent on the console and the picture.
SCORE_PREFIXES = ("val_dice", "val_iou")


def plot_training_curves(csv_path: Path, png_path: Path, log_loss: bool = False) -> None:
    """Every loss column (``*loss*``, ``*mse*``) against the epoch on the left (log scale with
    ``log_loss``), every other ``val_*`` score on the right; fractional epochs (a run stopped by
    its time budget mid-epoch) are plotted where they fall."""
    from .._optional import require
    matplotlib = require("matplotlib", feature="the training-curve plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..atomic import atomic_write_bytes

    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    names = list(rows[0])

    def col(name: str) -> tuple[list[float], list[float]]:
        pts = [(float(r["epoch"]), float(r[name])) for r in rows if r.get(name) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name in names:
        if any(w in name for w in LOSS_WORDS):
            x, y = col(name)
            if x and (not log_loss or all(v > 0 for v in y)):
                ax1.plot(x, y, "--" if name.startswith("val_") else "-", marker="o", ms=2.5,
                         label=name.replace("_", " "))
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    if ax1.lines:
        if log_loss:
            ax1.set_yscale("log")
        ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    for name in names:
        if name.startswith("val_") and not any(w in name for w in LOSS_WORDS) \
                and not name.startswith("val_iou/"):
            x, y = col(name)
            if name.startswith(SCORE_PREFIXES):
                y = [100 * v for v in y]     # fractions in metrics.csv, percent on the picture
            if x:
                ax2.plot(x, y, "--" if "/" in name else "-", marker="o", ms=2.5,
                         label=name.replace("_", " ") + " (%)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation score (%)")
    if ax2.lines:
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no validation score", ha="center", va="center", transform=ax2.transAxes)
    ax2.grid(alpha=0.3)
    if all(float(r["epoch"]).is_integer() for r in rows):
        from matplotlib.ticker import MaxNLocator
        for ax in (ax1, ax2):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(Path(csv_path).parent.name)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())
