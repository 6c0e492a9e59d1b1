"""The run directory's human-facing files: metrics.jsonl (one JSON object per logged iteration or validation) and
curves.png (loss parts, learning rate and validation Dice, drawn with matplotlib's Agg backend)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..atomic import atomic_path

log = logging.getLogger(__name__)


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a crash: everything after it is dropped too
    return rows


def truncate_metrics(path: Path, iteration: int) -> None:
    """Keep only the records up to ``iteration`` (a resumed run repeats the iterations after its checkpoint)."""
    if not path.is_file():
        return
    rows = [r for r in read_metrics(path) if int(r.get("iteration", 0)) <= iteration]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


class MetricsLog:
    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


def _smooth(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def write_curves(metrics_path: Path, out_path: Path) -> bool:
    """Draw curves.png from metrics.jsonl; False (and a log line) when matplotlib is not installed."""
    try:
        import matplotlib
        logging.getLogger("matplotlib").setLevel(max(logging.getLogger("matplotlib").level, logging.INFO))
        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed; curves.png not drawn")
        return False
    rows = read_metrics(metrics_path)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if r.get("validation_dice") is not None]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if train:
        it = [r["iteration"] for r in train]
        window = max(1, len(train) // 20)
        for key in ("loss", "bce", "dice", "modality_ce"):
            axes[0].plot(it, _smooth([r[key] for r in train], window), label=key)
        axes[0].set_yscale("log")
        axes[0].legend()
        axes[1].plot(it, [r["lr"] for r in train])
    axes[0].set_title("training loss (moving average)")
    axes[0].set_xlabel("iteration")
    axes[1].set_title("learning rate")
    axes[1].set_xlabel("iteration")
    if val:
        axes[2].plot([r["iteration"] for r in val], [r["validation_dice"] for r in val], marker="o")
    axes[2].set_title("validation Dice (EMA model)")
    axes[2].set_xlabel("iteration")
    axes[2].set_ylim(0, 1)
    fig.tight_layout()
    with atomic_path(out_path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return True
