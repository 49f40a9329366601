"""Training curves: CSV files for `dvc plots` and PNG pictures (loss as the book draws it, and the LR)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .atomic import atomic_path, atomic_write_text

STEP_COLUMNS = ("step", "epoch", "tokens_seen", "train_loss", "lr", "grad_norm")
EVAL_COLUMNS = ("step", "tokens_seen", "train_loss", "val_loss")


def to_csv(rows: list[dict], columns) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_plot_data(history: dict, folder) -> None:
    """folder/steps.csv (per step: loss, LR, grad norm) and folder/evals.csv (train/val loss per evaluation)."""
    folder = Path(folder)
    atomic_write_text(folder / "steps.csv", to_csv(history["steps"], STEP_COLUMNS))
    atomic_write_text(folder / "evals.csv", to_csv(history["evals"], EVAL_COLUMNS))


def draw_plots(history: dict, folder) -> list[Path]:
    """loss.png (train/val loss against steps, tokens seen on a second axis) and lr.png; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    steps, evals = history["steps"], history["evals"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([s["step"] for s in steps], [s["train_loss"] for s in steps], color="0.75", lw=1,
            label="train loss (per step)")
    ax.plot([e["step"] for e in evals], [e["train_loss"] for e in evals], "-o", ms=3, label="train loss (eval)")
    ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "--o", ms=3,
            label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend()
    if steps:  # the book's second x-axis: tokens seen
        top = ax.twiny()
        top.set_xlim(ax.get_xlim()[0] * steps[-1]["tokens_seen"] / steps[-1]["step"],
                     ax.get_xlim()[1] * steps[-1]["tokens_seen"] / steps[-1]["step"])
        top.set_xlabel("tokens seen")
    fig.tight_layout()
    paths = [folder / "loss.png", folder / "lr.png"]
    save_figure(fig, paths[0])
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3))
    ax.plot([s["step"] for s in steps], [s["lr"] for s in steps])
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, paths[1])
    plt.close(fig)
    return paths


def save_figure(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
