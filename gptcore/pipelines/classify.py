"""The classifier pipeline's stages (stages/classify/dvc.yaml), as library functions of validated params:
fine-tune a pretrained model into the book's chapter-6 classifier, evaluate it on every split. (Its prepare
stage is gptcore.data.labelled.prepare_labelled.)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import torch

from ..atomic import atomic_write_text
from ..data.labelled import SPLITS, read_split
from ..data.loaders import make_dataloader
from ..formats.loading import load_model
from ..model.lora import apply_lora
from ..model.runtime import setup_runtime
from ..model.tokenizer import Tokenizer
from ..params import Params
from ..tasks.classification import (Classification, attach_head, check_rows, encode_split, freeze, load_classifier,
                                    save_classifier, score, token_length)
from ..tracking.models import log_classifier
from ..tracking.plots import to_csv
from ..tracking.runs import repo_root
from .finetune import finish_tracked, fit_tracked, log_evaluation, pipeline_tracking, run_key

SECTIONS = ("classify", "classify_train", "classify_lora", "tracking")


def build_classifier(params: Params, n_classes: int):
    """The book's transform of the pretrained model: a new head drawn after torch.manual_seed(seed), then
    the layers that train (classify.trainable), or LoRA adapters on a frozen model (classify_lora)."""
    settings, lora = params.classify, params.classify_lora
    model = load_model(settings.init_from, drop_rate=settings.drop_rate, n_heads=settings.n_heads,
                       n_heads_key="classify.n_heads")
    torch.manual_seed(params.classify_train.seed)
    attach_head(model, n_classes)
    if lora.rank:
        apply_lora(model, lora, "classify_lora")
    else:
        freeze(model, settings.trainable)
    return model


def encode_splits(splits_dir: Path, names, max_length: int | None, context_length: int, pad_id: int,
                  position: str, tokenizer) -> tuple[dict, int]:
    """Each split as tensors, cut and padded to one length: max_length, or the longest training text (the
    book), at most the context; says how many texts were cut."""
    texts = {name: read_split(splits_dir, name) for name in names}
    encoded = {name: tokenizer.encode_batch(rows["text"].tolist()) for name, rows in texts.items()}
    length = token_length(encoded.get("train", []), max_length, context_length)
    result = {name: encode_split(encoded[name], texts[name]["label"], length, pad_id, position) for name in names}
    for name, split in result.items():
        if split.truncated:
            print(f"warning: {name}: {split.truncated} of {len(split.labels)} texts are longer than {length} tokens "
                  "and were cut to it", file=sys.stderr)
    return result, length


def finetune_classifier(params: Params, *, splits_dir: Path, model_dir: Path, metrics_file: Path,
                        plots_dir: Path) -> dict:
    """Fine-tune (resuming an interrupted run) and write the classifier, its metrics and curves; log and
    register it."""
    settings, train = params.classify, params.classify_train
    meta = json.loads((Path(splits_dir) / "meta.json").read_text())
    check_rows(meta["rows"]["train"], train)
    tokenizer = Tokenizer()
    model = build_classifier(params, len(meta["labels"]))
    splits, length = encode_splits(splits_dir, ("train", "validation"), settings.max_length,
                                   model.config.context_length, settings.pad_id, settings.position, tokenizer)
    info = {"labels": meta["labels"], "position": settings.position, "max_length": length, "pad_id": settings.pad_id,
            "parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "base": settings.init_from, "lora_rank": params.classify_lora.rank}
    checkpoint_dir = repo_root() / "checkpoints" / f"classify-{run_key(params, splits_dir, SECTIONS)}"
    task = Classification(splits["train"], splits["validation"], cache_frozen=settings.cache_frozen)
    trainer, history, tracker, seconds = fit_tracked(
        model, task, train, "classify_train", pipeline_tracking(params, "classify"), checkpoint_dir,
        stage="classify",
        tags={"task": "classification", "base_model": settings.init_from},
        params={k: params.values[k] for k in SECTIONS},
        dataset=(Path(settings.source).name, meta["sha256"], settings.source,
                 {"labels": meta["labels"], "rows": meta["rows"]}))
    shutil.rmtree(model_dir, ignore_errors=True)
    save_classifier(model, model_dir, info, lora=params.classify_lora, base=settings.init_from)
    last_eval, last_epoch = history["evals"][-1], history["epochs"][-1] if history["epochs"] else {}
    metrics = {"train_loss": last_eval["train_loss"], "val_loss": last_eval["val_loss"],
               **{k: last_epoch[k] for k in ("train_accuracy", "val_accuracy") if k in last_epoch},
               "steps": trainer.step, "parameters": info["parameters"],
               "trainable_parameters": info["trainable_parameters"], "max_length": length,
               "frozen_blocks_cached": task.module.start_block, "runtime": trainer.runtime.describe()}
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(Path(plots_dir) / "classify_eval.csv",
                      to_csv(history["evals"], {"train_loss": "train_loss", "val_loss": "val_loss"}))
    atomic_write_text(Path(plots_dir) / "classify_accuracy.csv",
                      to_csv(history["epochs"], {"epoch": "epoch", "train_accuracy": "train_accuracy",
                                                 "val_accuracy": "val_accuracy"}))
    finish_tracked(tracker, trainer, model_dir, checkpoint_dir, seconds, settings.registered_model,
                   lambda: log_classifier(tracker, model_dir, settings.registered_model, meta["labels"],
                                          read_split(splits_dir, "test")["text"].iloc[0]))
    return metrics | {"wall_seconds": seconds}


def per_class_table(labels: list[str], truth: list[int], predicted: list[int]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(confusion matrix: rows true, columns predicted; precision / recall / F1 / support per class)."""
    frame = pd.DataFrame({"true": pd.Categorical([labels[i] for i in truth], labels),
                          "predicted": pd.Categorical([labels[i] for i in predicted], labels)})
    confusion = pd.crosstab(frame["true"], frame["predicted"], dropna=False)
    hits = pd.Series([confusion.loc[label, label] for label in labels], index=labels, dtype=float)
    precision = (hits / confusion.sum(axis=0)).fillna(0.0)
    recall = (hits / confusion.sum(axis=1)).fillna(0.0)
    f1 = (2 * precision * recall / (precision + recall)).fillna(0.0)
    table = pd.DataFrame({"precision": precision, "recall": recall, "f1": f1, "support": confusion.sum(axis=1)})
    return confusion, table.rename_axis("class")


def evaluate_classifier(params: Params, *, splits_dir: Path, model_dir: Path, metrics_file: Path,
                        report_dir: Path) -> dict:
    """Accuracy of the classifier on every row of each split -> metrics_file (what `dvc exp show` compares); the
    losses, the test split's F1 per class and what made them (runtime) -> report_dir/evaluation.json, its
    confusion matrix and per-class precision / recall / F1 -> report_dir; all of it to the MLflow run."""
    classifier, info = load_classifier(model_dir)
    runtime = setup_runtime(params.classify_train.device, params.classify_train.precision)
    classifier.to(runtime.device)
    tokenizer = Tokenizer()
    splits, _ = encode_splits(splits_dir, SPLITS, info["max_length"], classifier.model.config.context_length,
                              info["pad_id"], info["position"], tokenizer)
    metrics, reported, measured = {}, {}, {}
    for name, split in splits.items():
        loader = make_dataloader(split.dataset(), batch_size=params.classify_train.batch_size, shuffle=False,
                                 drop_last=False, seed=0, split=name)
        measured[name] = score(classifier, loader, num_batches=None, runtime=runtime)
        short = "val" if name == "validation" else name
        metrics[f"{short}_accuracy"], reported[f"{short}_loss"] = measured[name]["accuracy"], measured[name]["loss"]
    confusion, table = per_class_table(info["labels"], splits["test"].labels.tolist(), measured["test"]["predicted"])
    reported |= {f"test_f1_{label}": float(table.loc[label, "f1"]) for label in info["labels"]}
    metrics |= {"parameters": info["parameters"], "trainable_parameters": info["trainable_parameters"],
                "rows": {name: len(split.labels) for name, split in splits.items()}}
    reports = [Path(report_dir) / name for name in ("evaluation.json", "confusion_matrix.csv", "per_class.csv")]
    atomic_write_text(reports[0], json.dumps(reported | {"runtime": runtime.describe()}, indent=2) + "\n")
    atomic_write_text(reports[1], confusion.to_csv())
    atomic_write_text(reports[2], table.to_csv())
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2) + "\n")
    log_evaluation(pipeline_tracking(params, "classify"), model_dir, "evaluate-classifier", metrics | reported,
                   runtime.describe(), reports)
    return metrics | reported
