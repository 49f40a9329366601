"""What the fine-tuning pipelines' stages do, as library functions of validated params: the classifier's
(stages/classify/dvc.yaml: fine-tune a pretrained model into the book's chapter-6 classifier, evaluate it
on every split) and the instruction model's (stages/instruct/dvc.yaml: fine-tune on instructions as its
chapter 7, generate the test responses, evaluate them).

Each fine-tune stage starts its pipeline's MLflow run (curves, the model, registered as a pyfunc) and
records its id next to the model; the later stages add their metrics and files to it. (The prepare
stages are gptcore.labelled.prepare_labelled and gptcore.instruct.prepare_instructions.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from .atomic import atomic_write_text
from .callbacks import PrintProgress
from .checkpoint import latest_checkpoint, load_model
from .classifier import (Classification, attach_head, check_rows, encode_split, freeze, load_classifier,
                         save_classifier, score, token_length)
from .datasets import make_dataloader
from .instruct import (InstructionModel, InstructionTuning, Template, count_cut, encode_entries, length_limit,
                       load_instruct_model, loaders_for, padding_share, respond, response_loss, save_instruct_info)
from .instruct import read_split as read_instruction_split
from .judge import check_judge, judge_responses, rouge_l
from .labelled import SPLITS, read_split
from .lora import apply_lora, save_trained
from .machine import cpu_model
from .params import Params
from .plots import to_csv
from .runtime import setup_runtime
from .tokenizer import Tokenizer
from .settings.tracking import TrackingConfig
from .settings.train import TrainConfig
from .tracking import RUN_FILE, Tracker, TrackingCallback, repo_root
from .trainer import Trainer

SECTIONS = ("classify", "classify_train", "classify_lora", "tracking")


def build_classifier(params: Params, n_classes: int):
    """The book's transform of the pretrained model: a new head drawn after torch.manual_seed(seed), then
    the layers that train (classify.trainable), or LoRA adapters on a frozen model (classify_lora)."""
    settings, lora = params.classify, params.classify_lora
    model = load_model(settings.init_from, drop_rate=settings.drop_rate)
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
            print(f"{name}: {split.truncated} of {len(split.labels)} texts are longer than {length} tokens and were "
                  "cut to it")
    return result, length


def run_key(params: Params, splits_dir: Path, sections: tuple[str, ...]) -> str:
    """What names a run's checkpoint folder: its sections but tracking, and its prepared data."""
    meta = json.loads((Path(splits_dir) / "meta.json").read_text())
    key = json.dumps([{k: params.values[k] for k in sections if k != "tracking"}, meta], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def fit_tracked(model, task, config: TrainConfig, tracking: TrackingConfig, checkpoint_dir: Path, *, stage: str,
                tags: dict, params: dict, dataset: tuple) -> tuple[Trainer, dict, Tracker | None, float]:
    """Fine-tune on a task in the one training loop, resuming an interrupted run (and its MLflow run);
    a new run logs params and the dataset (Tracker.log_dataset's arguments). (trainer, history, tracker,
    seconds)."""
    tracker = None
    if tracking.enabled:
        if latest_checkpoint(checkpoint_dir) is not None and (checkpoint_dir / RUN_FILE).is_file():
            tracker = Tracker.attach(tracking, checkpoint_dir, {}, stage)
        else:
            tracker = Tracker.start(tracking, name=f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}", tags=tags,
                                    params=params)
            tracker.log_dataset(*dataset)
            tracker.write_run_file(checkpoint_dir)
    callbacks = [PrintProgress()] + ([TrackingCallback(tracker, tracking.log_every)] if tracker else [])
    trainer = Trainer(model, config, task, checkpoint_dir=checkpoint_dir, callbacks=callbacks)
    if trainer.resume():
        print(f"resuming from step {trainer.step} ({checkpoint_dir})")
    started = time.perf_counter()
    history = trainer.fit()
    return trainer, history, tracker, time.perf_counter() - started


def finish_tracked(tracker: Tracker | None, trainer: Trainer, model_dir: Path, checkpoint_dir: Path, seconds: float,
                   registered_model: str | None, log_model) -> None:
    """After the model is saved: point it at its run, log the wall time and the model (log_model(), which
    returns the registered version), end the run; the checkpoints go."""
    if tracker:
        tracker.write_run_file(model_dir, step=trainer.step)
        tracker.log_metrics({"train/wall_seconds": seconds}, trainer.step)
        version = log_model()
        if version:
            print(f"registered model {registered_model!r} version {version}")
        tracker.finish()
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


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
        model, task, train, params.tracking, checkpoint_dir, stage="classify",
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
                   lambda: tracker.log_classifier(model_dir, settings.registered_model, meta["labels"],
                                                  read_split(splits_dir, "test")["text"].iloc[0]))
    return metrics | {"wall_seconds": seconds}


def log_evaluation(tracking: TrackingConfig, model_dir: Path, stage: str, metrics: dict, artifacts=()) -> None:
    """The evaluation's numbers (evaluate/<name>) and files (evaluation/) in the run that trained the model."""
    if not tracking.enabled:
        return
    tracker = Tracker.attach(tracking, model_dir, {}, stage)
    tracker.log_metrics({f"evaluate/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
                        tracker.last_step)
    for path in artifacts:
        tracker.log_artifact(path, "evaluation")
    tracker.finish()


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
    """Loss and accuracy of the classifier on every row of each split -> metrics_file (what `dvc exp show`
    compares); the test split's confusion matrix and per-class precision / recall / F1 -> report_dir and
    the MLflow run."""
    classifier, info = load_classifier(model_dir)
    runtime = setup_runtime(params.classify_train.device, params.classify_train.precision)
    classifier.to(runtime.device)
    tokenizer = Tokenizer()
    splits, _ = encode_splits(splits_dir, SPLITS, info["max_length"], classifier.model.config.context_length,
                              info["pad_id"], info["position"], tokenizer)
    metrics, measured = {}, {}
    for name, split in splits.items():
        loader = make_dataloader(split.dataset(), batch_size=params.classify_train.batch_size, shuffle=False,
                                 drop_last=False, seed=0, split=name)
        measured[name] = score(classifier, loader, num_batches=None, runtime=runtime)
        short = "val" if name == "validation" else name
        metrics[f"{short}_accuracy"], metrics[f"{short}_loss"] = measured[name]["accuracy"], measured[name]["loss"]
    confusion, table = per_class_table(info["labels"], splits["test"].labels.tolist(), measured["test"]["predicted"])
    metrics |= {f"test_f1_{label}": float(table.loc[label, "f1"]) for label in info["labels"]}
    metrics |= {"parameters": info["parameters"], "trainable_parameters": info["trainable_parameters"],
                "rows": {name: len(split.labels) for name, split in splits.items()}, "runtime": runtime.describe()}
    atomic_write_text(Path(report_dir) / "confusion_matrix.csv", confusion.to_csv())
    atomic_write_text(Path(report_dir) / "per_class.csv", table.to_csv())
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2) + "\n")
    log_evaluation(params.tracking, model_dir, "evaluate-classifier", metrics,
                   [Path(report_dir) / name for name in ("confusion_matrix.csv", "per_class.csv")])
    return metrics


# -- the instruction pipeline (stages/instruct/dvc.yaml) ------------------------------------------------

INSTRUCT_SECTIONS = ("instruct", "instruct_train", "instruct_lora", "tracking")


def build_instruction_model(params: Params):
    """The pretrained model with its head apart from the token embedding (OpenAI's are tied; the book's
    GPTModel holds a copy in its out_head), every layer training (the book), or frozen with LoRA adapters
    drawn after torch.manual_seed(seed) (its exercise 7.4)."""
    model = load_model(params.instruct.init_from, drop_rate=params.instruct.drop_rate)
    model.untie_embeddings()
    if params.instruct_lora.rank:
        torch.manual_seed(params.instruct_train.seed)
        apply_lora(model, params.instruct_lora, "instruct_lora")
    return model


def finetune_instructions(params: Params, *, splits_dir: Path, model_dir: Path, metrics_file: Path,
                          plots_dir: Path) -> dict:
    """Fine-tune on the instruction entries (resuming an interrupted run) and write the model with its
    template, its metrics and loss curves; log and register it."""
    settings, train = params.instruct, params.instruct_train
    meta = json.loads((Path(splits_dir) / "meta.json").read_text())
    tokenizer, template = Tokenizer(), Template.of(settings)
    entries = {name: read_instruction_split(splits_dir, name) for name in ("train", "validation")}
    model = build_instruction_model(params)
    encoded = {name: encode_entries(part, template, tokenizer) for name, part in entries.items()}
    task = InstructionTuning(encoded["train"], encoded["validation"], settings)
    checkpoint_dir = repo_root() / "checkpoints" / f"instruct-{run_key(params, splits_dir, INSTRUCT_SECTIONS)}"
    trainer, history, tracker, seconds = fit_tracked(
        model, task, train, params.tracking, checkpoint_dir, stage="instruct",
        tags={"task": "instruction", "base_model": settings.init_from},
        params={k: params.values[k] for k in INSTRUCT_SECTIONS},
        dataset=(Path(settings.source).name, meta["sha256"], settings.source, {"entries": meta["entries"]}))
    limit = task.limit
    info = {"parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "base": settings.init_from, "lora_rank": params.instruct_lora.rank, "allowed_max_length": limit,
            "mask_prompt": settings.mask_prompt}
    shutil.rmtree(model_dir, ignore_errors=True)
    save_trained(model, model_dir, params.instruct_lora, settings.init_from)
    save_instruct_info(model_dir, template, settings, info)
    order = task.train_loader.sampler.order()  # the last epoch's batches, as they trained
    batches = [order[i:i + train.batch_size] for i in range(0, len(order) - train.batch_size + 1, train.batch_size)]
    last_eval = history["evals"][-1]
    metrics = {"train_loss": last_eval["train_loss"], "val_loss": last_eval["val_loss"], "steps": trainer.step,
               "tokens_seen": trainer.tokens_seen, **{k: info[k] for k in ("parameters", "trainable_parameters")},
               "padding_share": padding_share(encoded["train"], batches, limit),
               "entries_cut": count_cut(encoded["train"], limit), "runtime": trainer.runtime.describe()}
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(Path(plots_dir) / "instruct_eval.csv",
                      to_csv(history["evals"], {"train_loss": "train_loss", "val_loss": "val_loss"}))
    example = read_instruction_split(splits_dir, "test")[0]
    finish_tracked(tracker, trainer, model_dir, checkpoint_dir, seconds, settings.registered_model,
                   lambda: tracker.log_instruct(model_dir, settings.registered_model, example))
    return metrics | {"wall_seconds": seconds}


def responses_markdown(entries: list[dict], title: str) -> str:
    """The test responses for a person to read: each instruction, its input, the reference and the model's."""
    lines = [f"# {title}", ""]
    for number, entry in enumerate(entries, start=1):
        lines += [f"## {number}. {entry['instruction']}", ""]
        if entry["input"]:
            lines += [f"**Input:** {entry['input']}", ""]
        lines += [f"**Reference:** {entry['output']}", "", f"**Model:** {entry['model_response']}", ""]
    return "\n".join(lines)


def generate_instruction_responses(params: Params, *, splits_dir: Path, model_dir: Path, out_dir: Path) -> dict:
    """Each test entry's greedy response (batched, KV-cached) -> out_dir/responses.json (the entries with
    model_response, as the book's instruction-data-with-response.json), responses.md and generation.json
    (tokens, time, cut prompts); the table goes to the model's MLflow run."""
    model, template, info = load_instruct_model(model_dir)
    runtime = setup_runtime(params.instruct_train.device, params.instruct_train.precision)
    entries = read_instruction_split(splits_dir, "test")
    started = time.perf_counter()
    responses, stats = respond(model, template, entries, Tokenizer(), max_new_tokens=params.instruct.max_new_tokens,
                               batch_size=params.instruct.generate_batch_size, runtime=runtime)
    seconds = time.perf_counter() - started
    answered = [entry | {"model_response": response} for entry, response in zip(entries, responses)]
    stats |= {"responses": len(answered), "seconds": seconds, "tokens_per_second": stats["generated_tokens"] / seconds,
              "batch_size": params.instruct.generate_batch_size, "runtime": runtime.describe()}
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "responses.json", json.dumps(answered, indent=4, ensure_ascii=False) + "\n")
    atomic_write_text(out_dir / "responses.md", responses_markdown(
        answered, f"Test responses of the model fine-tuned from `{info['base']}`, greedy, {runtime.precision} "
                  f"on {cpu_model() if runtime.device.type == 'cpu' else runtime.device}"))
    atomic_write_text(out_dir / "generation.json", json.dumps(stats, indent=2) + "\n")
    if params.tracking.enabled:
        tracker = Tracker.attach(params.tracking, model_dir, {}, "generate-responses")
        tracker.log_table(pd.DataFrame(answered), "evaluation/responses.json")
        tracker.log_artifact(out_dir / "responses.md", "evaluation")
        tracker.finish()
    return stats


def evaluate_instructions(params: Params, *, splits_dir: Path, model_dir: Path, responses_dir: Path,
                          metrics_file: Path, scores_file: Path) -> dict:
    """The test split's loss and perplexity on its response tokens, the responses' ROUGE-L against the
    references and, with judge.enabled, the judge's 0-100 scores -> metrics_file, scores_file (per entry)
    and the model's MLflow run. An unreachable judge stops the stage before any work."""
    judge = params.judge
    if judge.enabled:
        check_judge(judge)
    model, template, info = load_instruct_model(model_dir)
    runtime = setup_runtime(params.instruct_train.device, params.instruct_train.precision)
    model.to(runtime.device)
    answered = json.loads((Path(responses_dir) / "responses.json").read_text(encoding="utf-8"))
    encoded = encode_entries(read_instruction_split(splits_dir, "test"), template, Tokenizer())
    settings = dataclasses.replace(params.instruct, mask_prompt=True)  # the responses' tokens only
    limit = length_limit(settings, model.config.context_length)
    loader = loaders_for(encoded, settings, limit, batch_size=params.instruct_train.batch_size, shuffle=False,
                         drop_last=False, seed=0, split="test")
    measured = response_loss(InstructionModel(model, settings.ignore_index), loader, num_batches=None, runtime=runtime)
    overlap = rouge_l([entry["output"] for entry in answered], [entry["model_response"] for entry in answered])
    generation = json.loads((Path(responses_dir) / "generation.json").read_text())
    metrics = {"test_loss": measured["loss"], "test_perplexity": measured["perplexity"],
               "test_response_tokens": measured["tokens"], "rouge_l": sum(overlap) / len(overlap),
               "responses": len(answered), "generated_tokens": generation["generated_tokens"],
               "generation_tokens_per_second": generation["tokens_per_second"], "base": info["base"],
               "runtime": runtime.describe()}
    per_entry = [{"instruction": entry["instruction"], "rouge_l": score} for entry, score in zip(answered, overlap)]
    if judge.enabled:
        scores = judge_responses(judge, template, answered)
        valid = [score for score in scores if score is not None]
        metrics |= {"judge_score": sum(valid) / len(valid) if valid else float("nan"), "judge_scored": len(valid),
                    "judge_model": judge.model}
        per_entry = [row | {"judge_score": score} for row, score in zip(per_entry, scores)]
    atomic_write_text(scores_file, json.dumps(per_entry, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2) + "\n")
    log_evaluation(params.tracking, model_dir, "evaluate-instructions", metrics, [scores_file])
    return metrics
