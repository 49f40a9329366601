"""Training curves: CSV files for `dvc plots` and PNG pictures (loss as the book draws it, and the LR)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..atomic import atomic_path, atomic_write_text

# The curves of a run: <file>.csv's columns (after `step`) -> the history record key they hold. MLflow
# logs column c of file f as the metric "f/c" (train/loss, eval/val_loss), so the CSV files, dvc.yaml's
# plots and the MLflow UI use one set of names.
CURVES = {"train": {"epoch": "epoch", "tokens_seen": "tokens_seen", "loss": "train_loss", "lr": "lr",
                    "grad_norm": "grad_norm"},
          "eval": {"tokens_seen": "tokens_seen", "train_loss": "train_loss", "val_loss": "val_loss"}}
HISTORY = {"train": "steps", "eval": "evals"}


def to_csv(rows: list[dict], columns: dict) -> str:
    """rows as CSV with a `step` column, then each column's record key under the column's name."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", *columns])
    writer.writerows([row["step"], *(row[key] for key in columns.values())] for row in rows)
    return buffer.getvalue()


def write_plot_data(history: dict, folder) -> None:
    """folder/train.csv (per step: loss, LR, grad norm) and folder/eval.csv (train/val loss per evaluation)."""
    for name, columns in CURVES.items():
        atomic_write_text(Path(folder) / f"{name}.csv", to_csv(history[HISTORY[name]], columns))


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
