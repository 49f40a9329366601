"""The preference pipeline's stages (stages/preference/dvc.yaml), as library functions of validated params: tune the
instruction model by DPO as the book's bonus notebook, generate the test responses of the model before and after,
evaluate them. (Its prepare stage is gptcore.data.instructions.prepare_instructions of the preference fields.)
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from ..data.instructions import read_split
from ..errors import MissingInputError
from ..evaluation.judge import rouge_l
from ..formats.adapters import save_trained
from ..formats.loading import load_model
from ..machine import cpu_model
from ..model.lora import apply_lora
from ..model.runtime import setup_runtime
from ..model.tokenizer import Tokenizer
from ..params import Params
from ..tasks.instruction_tuning import INSTRUCT_FILE, Template, load_instruct_model, respond, save_instruct_info
from ..tasks.preference_tuning import (PreferenceTuning, encode_preferences, entry_logprobs, length_limit,
                                       reward_metrics)
from ..tracking.models import log_instruction_model
from ..tracking.plots import to_csv
from ..tracking.runs import repo_root
from .finetune import (finish_tracked, fit_tracked, log_evaluation, pipeline_tracking, responses_markdown, run_key,
                       write_responses)

SECTIONS = ("preference", "preference_train", "preference_lora", "tracking")
SIDES = ("reference", "policy")  # the model before DPO and after
# what responses.md shows of each test entry, side by side
SHOWN = (("Chosen", "chosen"), ("Rejected", "rejected"), ("Before DPO", "reference_response"),
         ("After DPO", "policy_response"))


def build_policy(params: Params):
    """The instruction model of preference.init_from (its template recorded beside it), every layer training (the
    notebook), or frozen with LoRA adapters drawn after torch.manual_seed(seed); its template and record."""
    settings, folder = params.preference, Path(params.preference.init_from)
    if not (folder / INSTRUCT_FILE).is_file():
        raise MissingInputError(f"preference.init_from = {str(folder)!r} holds no instruction model ({INSTRUCT_FILE}: "
                                "its template): DPO tunes one; give the folder the instruction pipeline wrote "
                                "(data/instruct/model)")
    info = json.loads((folder / INSTRUCT_FILE).read_text())
    template = Template(**info["template"])
    model = load_model(folder, drop_rate=settings.drop_rate)
    if params.preference_lora.rank:
        torch.manual_seed(params.preference_train.seed)
        apply_lora(model, params.preference_lora, "preference_lora")
    return model, template, info


def tune_preferences(params: Params, *, splits_dir: Path, model_dir: Path, metrics_file: Path, plots_dir: Path) -> dict:
    """DPO on the preference entries (resuming an interrupted run) -> the tuned model with its template, its
    metrics and curves (losses, rewards, margins); logged and registered as an instruction model of its own."""
    settings, train = params.preference, params.preference_train
    meta = json.loads((Path(splits_dir) / "meta.json").read_text())
    model, template, base_info = build_policy(params)
    encoded = {name: encode_preferences(read_split(splits_dir, name), template, Tokenizer(), settings.mask)
               for name in ("train", "validation")}
    task = PreferenceTuning(encoded["train"], encoded["validation"], settings)
    checkpoint_dir = repo_root() / "checkpoints" / f"preference-{run_key(params, splits_dir, SECTIONS)}"
    trainer, history, tracker, seconds = fit_tracked(
        model, task, train, "preference_train", pipeline_tracking(params, "preference"), checkpoint_dir,
        stage="preference", tags={"task": "preference", "base_model": settings.init_from},
        params={k: params.values[k] for k in SECTIONS},
        dataset=(Path(settings.source).name, meta["sha256"], settings.source, {"entries": meta["entries"]}))
    info = {"parameters": sum(p.numel() for p in model.parameters()),
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "base": settings.init_from, "instruction_base": base_info.get("base"),
            "lora_rank": params.preference_lora.rank, "allowed_max_length": task.limit, "beta": settings.beta}
    shutil.rmtree(model_dir, ignore_errors=True)
    save_trained(model, model_dir, params.preference_lora, settings.init_from)
    save_instruct_info(model_dir, template, settings, info)
    last_eval = history["evals"][-1]
    metrics = {**{k: v for k, v in last_eval.items() if k not in ("step", "tokens_seen")}, "steps": trainer.step,
               "tokens_seen": trainer.tokens_seen, "reference_seconds": task.reference_seconds,
               **{k: info[k] for k in ("parameters", "trainable_parameters")}, "runtime": trainer.runtime.describe()}
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2) + "\n")
    curves = ("train_loss", "val_loss", "train_reward_margin", "val_reward_margin")
    atomic_write_text(Path(plots_dir) / "preference_eval.csv", to_csv(history["evals"], {k: k for k in curves}))
    example = read_split(splits_dir, "test")[0]
    finish_tracked(tracker, trainer, model_dir, checkpoint_dir, seconds, settings.registered_model,
                   lambda: log_instruction_model(tracker, model_dir, settings.registered_model, example,
                                                 settings.max_new_tokens))
    return metrics | {"wall_seconds": seconds}


def generate_preference_responses(params: Params, *, splits_dir: Path, model_dir: Path, out_dir: Path) -> dict:
    """Each test entry's greedy response from the model before DPO (preference.init_from) and after (model_dir),
    batched and KV-cached -> out_dir/responses.json (the entries with reference_response and policy_response),
    responses.md side by side, generation.json; the table goes to the tuned model's MLflow run."""
    settings = params.preference
    runtime = setup_runtime(params.preference_train.device, params.preference_train.precision)
    entries = read_split(splits_dir, "test")
    responses, stats = {}, {"responses": len(entries), "runtime": runtime.describe()}
    started = time.perf_counter()
    for side, folder in zip(SIDES, (settings.init_from, model_dir)):
        model, template, _ = load_instruct_model(folder)
        responses[side], measured = respond(model, template, entries, Tokenizer(),
                                            max_new_tokens=settings.max_new_tokens,
                                            batch_size=settings.generate_batch_size, runtime=runtime)
        stats[f"{side}_generated_tokens"] = measured["generated_tokens"]
    stats["seconds"] = time.perf_counter() - started
    answered = [entry | {f"{side}_response": responses[side][index] for side in SIDES}
                for index, entry in enumerate(entries)]
    markdown = responses_markdown(answered, f"Test responses before and after DPO, greedy, {runtime.precision} on "
                                            f"{cpu_model() if runtime.device.type == 'cpu' else runtime.device}",
                                  SHOWN)
    write_responses(pipeline_tracking(params, "preference"), model_dir, "generate-preference-responses", out_dir,
                    answered, markdown, stats)
    return stats


def evaluate_preferences(params: Params, *, splits_dir: Path, model_dir: Path, responses_dir: Path,
                         metrics_file: Path) -> dict:
    """On the test split: the DPO loss, the reward accuracy (how often the chosen response's reward is above the
    rejected one's) and mean margin of the tuned model against the reference, and the ROUGE-L of both models'
    responses against `chosen` and against `rejected` -> metrics_file and the tuned model's MLflow run."""
    settings = params.preference
    runtime = setup_runtime(params.preference_train.device, params.preference_train.precision)
    logprobs = {}
    for side, folder in zip(SIDES, (settings.init_from, model_dir)):
        model, template, _ = load_instruct_model(folder)
        encoded = encode_preferences(read_split(splits_dir, "test"), template, Tokenizer(), settings.mask)
        limit = length_limit(settings, model.config.context_length)
        logprobs[side] = entry_logprobs(model.to(runtime.device), encoded, settings, limit, runtime,
                                        params.preference_train.batch_size)
    metrics = {f"test_{name}": value for name, value in
               reward_metrics(logprobs["policy"], logprobs["reference"], settings.beta).items()}
    answered = json.loads((Path(responses_dir) / "responses.json").read_text(encoding="utf-8"))
    for side in SIDES:
        for target in ("chosen", "rejected"):
            scores = rouge_l([entry[target] for entry in answered], [entry[f"{side}_response"] for entry in answered])
            metrics[f"{side}_rouge_l_{target}"] = sum(scores) / len(scores)
    metrics["responses"] = len(answered)
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2) + "\n")
    log_evaluation(pipeline_tracking(params, "preference"), model_dir, "evaluate-preferences", metrics,
                   runtime.describe())
    return metrics
