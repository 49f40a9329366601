"""What the plan-zero-shot, train, evaluate and generate-samples stages do, as library functions of validated
params.

Each writes its outputs atomically and adds to the pipeline's MLflow run: the train stage starts it
(or re-attaches to it after an interruption) and records its id next to the model, the later stages
find it there. (prepare and tokenize are gptcore.data.documents.prepare_data and
gptcore.data.token_files.tokenize_splits or gptcore.data.shards.tokenize_documents, which need no torch.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from ..data.shards import load_split
from ..evaluation.loss import evaluate_splits
from ..evaluation.zero_shot import (SPEED, ZeroShotProbe, evaluate_tasks, flat_metrics, load_tasks, task_file,
                                    warn_of_cuts)
from ..formats.adapters import save_trained
from ..formats.loading import initialize_model, load_model
from ..model.inference import prepare_for_inference, resolve_weights
from ..model.lora import apply_lora
from ..model.runtime import setup_runtime
from ..model.sampling import continue_prompts
from ..model.tokenizer import Tokenizer
from ..params import Params
from ..settings.zero_shot import ZeroShotConfig
from ..tasks.language_modeling import LanguageModeling
from ..tracking.metrics import TrackingCallback
from ..tracking.models import log_language_model
from ..tracking.plots import draw_plots, write_plot_data
from ..tracking.runs import RUN_FILE, Tracker, repo_root
from ..training import distributed
from ..training.callbacks import PrintProgress
from ..training.trainer import Trainer


def plan_zero_shot(params: Params, *, train_file: Path, evaluate_file: Path) -> dict[str, dict]:
    """The settings the zero-shot measurements of training and of the evaluate stage read (each {} when they
    measure nothing) -> train_file and evaluate_file, which those stages depend on in place of the zero_shot
    keys; each measured task's file found and its sum checked first (a URL's downloaded to the cache), before
    any stage computes."""
    config = params.zero_shot
    for task in sorted(set(config.tasks or []) | set(config.train_tasks or [])):
        task_file(task, config)
    plans = {"train": config.measured_settings(during_training=True),
             "evaluate": config.measured_settings(during_training=False)}
    for name, path in (("train", train_file), ("evaluate", evaluate_file)):
        atomic_write_text(path, json.dumps(plans[name], indent=2) + "\n")
    return plans


def read_zero_shot_plan(path: Path) -> tuple[ZeroShotConfig, dict]:
    """A file of plan_zero_shot: the settings a stage measures with, and the keys it holds (what MLflow logs)."""
    settings = json.loads(Path(path).read_text())
    return ZeroShotConfig(**settings), settings


def checkpoint_folder(params: Params, tokens_dir: Path) -> Path:
    """<repo>/checkpoints/<run key>: the key changes with the model and train params and the data, so
    another experiment never resumes this one's state."""
    splits = json.loads((tokens_dir / "meta.json").read_text())["splits"]
    key = json.dumps([params.values["model"], params.values["train"], splits] +
                     ([params.values["lora"]] if params.lora.rank else []), sort_keys=True)
    return repo_root() / "checkpoints" / hashlib.sha256(key.encode()).hexdigest()[:16]


def start_or_resume_run(params: Params, zero_shot: dict, checkpoint_dir: Path, tokens_dir: Path) -> Tracker:
    """Continue the MLflow run of a stopped or killed training run (from its checkpoint, or from the start when it
    died before the first), or start the pipeline's run with the corpus as its dataset input."""
    if (checkpoint_dir / RUN_FILE).is_file() and (tracker := Tracker.resume(params.tracking, checkpoint_dir)):
        return tracker
    tracker = Tracker.start(params.tracking, name=f"{params.model.preset}-{time.strftime('%Y%m%d-%H%M%S')}",
                            tags={"model_preset": params.model.preset},
                            params={**{k: params.values[k] for k in ("data", "model", "train", "lora", "tracking")},
                                    "zero_shot": zero_shot})
    meta = json.loads((tokens_dir / "meta.json").read_text())
    splits = meta["splits"]
    digest = hashlib.sha256("".join(splits[split]["sha256"] for split in ("train", "val")).encode()).hexdigest()
    tracker.log_dataset(Path(params.data.source.rstrip("/")).name or params.data.source, digest, params.data.source,
                        {"tokenizer": meta["tokenizer"], "source_sha256": params.data.sha256,
                         **{f"{split}_tokens": splits[split]["tokens"] for split in ("train", "val")}})
    tracker.write_run_file(checkpoint_dir)
    return tracker


def stage_run(params: Params, model_dir: Path, section: str, **more: dict) -> Tracker | None:
    """The MLflow run of the model in model_dir, to which a stage adds its params section and the other settings
    it read (None if off)."""
    if not params.tracking.enabled:
        return None
    return Tracker.attach(params.tracking, model_dir, {section: params.values[section], **more}, section)


def train(params: Params, *, zero_shot_plan: Path, tokens_dir: Path, model_dir: Path, metrics_file: Path,
          speed_file: Path, plots_dir: Path) -> dict | None:
    """Train (resuming an interrupted run), measuring the zero-shot tasks of the plan (plan_zero_shot's train
    file), and write the model, the run's record (metrics_file: steps, tokens, the last evaluation, the runtime),
    speed and plots; log and register the model. The record and speed (None in the processes other than rank 0
    under DDP)."""
    with distributed.process_group(params.train.device):
        ranks = distributed.current()
        checkpoint_dir = checkpoint_folder(params, tokens_dir)
        # the benchmarks' data is read and checked before any compute
        zero_shot, planned = read_zero_shot_plan(zero_shot_plan)
        probe = ZeroShotProbe(zero_shot, Tokenizer(), params.model_config.context_length) \
            if zero_shot.train_tasks else None
        if probe and ranks.is_main:
            warn_of_cuts(probe.tasks, probe.context_length)
        torch.manual_seed(params.train.seed)
        model = initialize_model(params.model_config, params.model.init_from)
        if params.lora.rank:  # the book's appendix E on the language model: only the adapters train
            apply_lora(model, params.lora)
        tracker = start_or_resume_run(params, planned, checkpoint_dir, tokens_dir) \
            if params.tracking.enabled and ranks.is_main else None
        callbacks = [PrintProgress()] + \
            ([TrackingCallback(tracker, params.tracking.log_every, tracker.logged_through)] if tracker else [])
        task = LanguageModeling(load_split(tokens_dir, "train"), load_split(tokens_dir, "val"), probe)
        trainer = Trainer(model, params.train, task, tokenizer=Tokenizer(), checkpoint_dir=checkpoint_dir,
                          callbacks=callbacks)
        if tracker:  # what the numbers were made on, known from the start of the run
            tracker.tag_runtime(trainer.runtime.describe())
        if trainer.resume() and ranks.is_main:
            print(f"resuming from step {trainer.step} ({checkpoint_dir})")
        started = time.perf_counter()
        with tracker.system_metrics(params.tracking.system_metrics_seconds) if tracker else contextlib.nullcontext():
            history = trainer.fit()
    if not ranks.is_main:
        return None
    steps, last_eval = history["steps"], history["evals"][-1]
    metrics = {"train_loss": last_eval["train_loss"], "val_loss": last_eval["val_loss"],
               "steps": trainer.step, "tokens_seen": trainer.tokens_seen, "parameters": model.num_parameters(),
               "runtime": trainer.runtime.describe()}
    speed = {"tokens_per_second": sum(s["tokens_per_second"] for s in steps) / len(steps),
             "wall_seconds_this_session": time.perf_counter() - started}
    save_trained(model, model_dir, params.lora, params.model.init_from)
    write_plot_data(history, plots_dir)
    pictures = draw_plots(history, plots_dir)
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(speed_file, json.dumps(speed, indent=2) + "\n")
    if tracker:
        tracker.write_run_file(model_dir, step=trainer.step)
        tracker.log_metrics({f"train/mean_{k}" if k == "tokens_per_second" else f"train/{k}": v
                             for k, v in speed.items()}, trainer.step)
        for picture in pictures:
            tracker.log_artifact(picture, "plots")
        version = log_language_model(tracker, model_dir, params.tracking.registered_model, params.generate.prompts[0])
        if version:
            print(f"registered model {params.tracking.registered_model!r} version {version}")
        tracker.finish()
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # finished: nothing left to resume
    return metrics | speed


def evaluate(params: Params, *, zero_shot_plan: Path, model_dir: Path, tokens_dir: Path, metrics_file: Path,
             speed_file: Path) -> tuple[dict, dict]:
    """Loss and perplexity of the trained model on every window of both splits and the zero-shot tasks of the
    plan (plan_zero_shot's evaluate file) -> metrics_file (and the evaluation's speed -> speed_file); logged as
    evaluate/* at the training run's last step. Returns the metrics and speed, and each zero-shot task's result."""
    settings, (zero_shot, planned) = params.evaluate, read_zero_shot_plan(zero_shot_plan)
    tasks = load_tasks(zero_shot.tasks, zero_shot, Tokenizer(), zero_shot.limit)
    tracker = stage_run(params, model_dir, "evaluate", zero_shot=planned)
    runtime = setup_runtime(settings.device, settings.precision)
    model = load_model(model_dir).to(runtime.device)
    warn_of_cuts(tasks, model.config.context_length)
    measured = evaluate_splits(model, tokens_dir, batch_size=settings.batch_size,
                               max_batches=settings.max_batches, runtime=runtime)
    speed = {"tokens_per_second": measured.pop("tokens_per_second")}
    results = evaluate_tasks(model, tasks, runtime, zero_shot.batch_size)
    measured |= flat_metrics(results)
    speed |= flat_metrics(results, SPEED)
    # a split's perplexity is exp of its loss: printed and logged, not a second column to compare
    compared = {k: v for k, v in measured.items() if k not in ("train_perplexity", "val_perplexity")}
    atomic_write_text(metrics_file, json.dumps(compared, indent=2) + "\n")
    atomic_write_text(speed_file, json.dumps(speed | {"runtime": runtime.describe()}, indent=2) + "\n")
    if tracker:
        tracker.log_metrics({f"evaluate/{k}": v for k, v in (measured | speed).items()}, tracker.last_step)
        tracker.tag_runtime(runtime.describe(), "evaluate.runtime")
        tracker.finish()
    return measured | speed, results


def sample_name(index: int, prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "prompt"
    return f"{index:02d}-{slug}"


def to_markdown(sample: dict) -> str:
    sampler = ", ".join(f"{k}={v}" for k, v in sample["sampler"].items())
    return f"## Prompt\n\n> {sample['prompt']}\n\n**Sampler:** {sampler}\n\n## Text\n\n{sample['text']}\n"


SAMPLER_KEYS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "weights")


def generate_samples(params: Params, *, model_dir: Path, out_dir: Path) -> list[dict]:
    """One continuation per prompt -> out_dir/NN-<prompt>.md (people) and .json (programs); prompt i uses
    seed + i, so each sample is reproducible on its own."""
    tracker = stage_run(params, model_dir, "generate")
    settings = params.generate
    runtime = setup_runtime(settings.device, "fp32")
    model = prepare_for_inference(load_model(model_dir), settings.weights, runtime.device)
    tokenizer = Tokenizer()
    sampler = {k: getattr(settings, k) for k in SAMPLER_KEYS} | {"weights": resolve_weights(settings.weights,
                                                                                          runtime.device)}
    samples = [{"prompt": prompt, "sampler": sampler | {"seed": c["seed"]},
                "completion": tokenizer.decode(c["new_ids"]), "text": tokenizer.decode(c["prompt_ids"] + c["new_ids"]),
                "new_tokens": len(c["new_ids"])}
               for prompt, c in zip(settings.prompts, continue_prompts(model, tokenizer, settings.prompts, settings,
                                                                       runtime.device, "params.yaml: generate.prompts"))]
    shutil.rmtree(out_dir, ignore_errors=True)  # prompts may have been removed: no stale files
    for index, sample in enumerate(samples):
        name = sample_name(index, sample["prompt"])
        atomic_write_text(out_dir / f"{name}.md", to_markdown(sample))
        atomic_write_text(out_dir / f"{name}.json", json.dumps(sample, indent=2) + "\n")
        if tracker:
            tracker.log_text(to_markdown(sample), f"samples/{name}.md")
    if tracker:
        tracker.finish()
    return samples
