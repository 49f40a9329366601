"""The instruction pipeline's stages (stages/instruct/dvc.yaml), as library functions of validated params:
fine-tune on instructions as the book's chapter 7, generate the test responses, evaluate them. (Its prepare
stage is gptcore.data.instructions.prepare_instructions.)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch

from ..atomic import atomic_write_text
from ..data.instructions import read_split
from ..evaluation.judge import check_judge, judge_responses, rouge_l
from ..formats.adapters import save_trained
from ..formats.loading import load_model
from ..machine import cpu_model
from ..model.lora import apply_lora
from ..model.runtime import setup_runtime
from ..model.tokenizer import Tokenizer
from ..params import Params
from ..tasks.instruction_tuning import (InstructionModel, InstructionTuning, Template, count_cut, encode_entries,
                                        length_limit, load_instruct_model, loaders_for, padding_share, respond,
                                        response_loss, save_instruct_info)
from ..tracking.models import log_instruction_model
from ..tracking.plots import to_csv
from ..tracking.runs import repo_root
from .finetune import (finish_tracked, fit_tracked, log_evaluation, pipeline_tracking, responses_markdown, run_key,
                       write_responses)

SECTIONS = ("instruct", "instruct_train", "instruct_lora", "tracking")


def build_instruction_model(params: Params):
    """The pretrained model with its head apart from the token embedding (OpenAI's are tied; the book's
    GPTModel holds a copy in its out_head), every layer training (the book), or frozen with LoRA adapters
    drawn after torch.manual_seed(seed) (its exercise 7.4)."""
    model = load_model(params.instruct.init_from, drop_rate=params.instruct.drop_rate, n_heads=params.instruct.n_heads,
                       n_heads_key="instruct.n_heads")
    model.untie_embeddings()
    if params.instruct_lora.rank:
        torch.manual_seed(params.instruct_train.seed)
        apply_lora(model, params.instruct_lora, "instruct_lora")
    return model


def finetune_instructions(params: Params, *, splits_dir: Path, model_dir: Path, metrics_file: Path,
                          plots_dir: Path) -> dict:
    """Fine-tune on the instruction entries (resuming an interrupted run) and write the model with its
    template, its metrics and loss curves; log and register it. With judge.enabled, a judge that does not
    answer stops it before any work, not after the fine-tuning and the responses."""
    if params.judge.enabled:
        check_judge(params.judge)
    settings, train = params.instruct, params.instruct_train
    meta = json.loads((Path(splits_dir) / "meta.json").read_text())
    tokenizer, template = Tokenizer(), Template.of(settings)
    entries = {name: read_split(splits_dir, name) for name in ("train", "validation")}
    model = build_instruction_model(params)
    encoded = {name: encode_entries(part, template, tokenizer) for name, part in entries.items()}
    task = InstructionTuning(encoded["train"], encoded["validation"], settings)
    checkpoint_dir = repo_root() / "checkpoints" / f"instruct-{run_key(params, splits_dir, SECTIONS)}"
    trainer, history, tracker, seconds = fit_tracked(
        model, task, train, "instruct_train", pipeline_tracking(params, "instruct"), checkpoint_dir,
        stage="instruct",
        tags={"task": "instruction", "base_model": settings.init_from},
        params={k: params.values[k] for k in SECTIONS},
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
    example = read_split(splits_dir, "test")[0]
    finish_tracked(tracker, trainer, model_dir, checkpoint_dir, seconds, settings.registered_model,
                   lambda: log_instruction_model(tracker, model_dir, settings.registered_model, example,
                                                 settings.max_new_tokens))
    return metrics | {"wall_seconds": seconds}


def generate_instruction_responses(params: Params, *, splits_dir: Path, model_dir: Path, out_dir: Path) -> dict:
    """Each test entry's greedy response (batched, KV-cached) -> out_dir/responses.json (the entries with
    model_response, as the book's instruction-data-with-response.json), responses.md and generation.json
    (tokens, time, cut prompts); the table goes to the model's MLflow run."""
    model, template, info = load_instruct_model(model_dir)
    runtime = setup_runtime(params.instruct_train.device, params.instruct_train.precision)
    entries = read_split(splits_dir, "test")
    started = time.perf_counter()
    responses, stats = respond(model, template, entries, Tokenizer(), max_new_tokens=params.instruct.max_new_tokens,
                               batch_size=params.instruct.generate_batch_size, runtime=runtime)
    seconds = time.perf_counter() - started
    answered = [entry | {"model_response": response} for entry, response in zip(entries, responses)]
    stats |= {"responses": len(answered), "seconds": seconds, "tokens_per_second": stats["generated_tokens"] / seconds,
              "batch_size": params.instruct.generate_batch_size, "runtime": runtime.describe()}
    markdown = responses_markdown(
        answered, f"Test responses of the model fine-tuned from `{info['base']}`, greedy, {runtime.precision} "
                  f"on {cpu_model() if runtime.device.type == 'cpu' else runtime.device}")
    write_responses(pipeline_tracking(params, "instruct"), model_dir, "generate-responses", out_dir, answered, markdown,
                    stats, {"evaluate/generation_tokens_per_second": stats["tokens_per_second"]})
    return stats


def evaluate_instructions(params: Params, *, splits_dir: Path, model_dir: Path, responses_dir: Path,
                          metrics_file: Path, scores_file: Path) -> dict:
    """The test split's loss and perplexity on its response tokens, the responses' ROUGE-L against the
    references and, with judge.enabled, the judge's 0-100 scores -> metrics_file, scores_file (per entry)
    and the model's MLflow run. An unreachable judge stops the stage before any work."""
    judge = params.judge
    if judge.enabled:
        check_judge(judge)
    model, template, _ = load_instruct_model(model_dir)
    runtime = setup_runtime(params.instruct_train.device, params.instruct_train.precision)
    model.to(runtime.device)
    answered = json.loads((Path(responses_dir) / "responses.json").read_text(encoding="utf-8"))
    encoded = encode_entries(read_split(splits_dir, "test"), template, Tokenizer())
    settings = dataclasses.replace(params.instruct, mask_prompt=True)  # the responses' tokens only
    limit = length_limit(settings, model.config.context_length)
    loader = loaders_for(encoded, settings, limit, batch_size=params.instruct_train.batch_size, shuffle=False,
                         drop_last=False, seed=0, split="test")
    measured = response_loss(InstructionModel(model, settings.ignore_index), loader, num_batches=None, runtime=runtime)
    overlap = rouge_l([entry["output"] for entry in answered], [entry["model_response"] for entry in answered])
    generation = json.loads((Path(responses_dir) / "generation.json").read_text())
    metrics = {"test_loss": measured["loss"], "test_response_tokens": measured["tokens"],
               "rouge_l": sum(overlap) / len(overlap), "responses": len(answered),
               "generated_tokens": generation["generated_tokens"]}
    per_entry = [{"instruction": entry["instruction"], "rouge_l": score} for entry, score in zip(answered, overlap)]
    if judge.enabled:
        scores = judge_responses(judge, template, answered)
        valid = [score for score in scores if score is not None]
        metrics |= {"judge_score": sum(valid) / len(valid) if valid else float("nan"), "judge_scored": len(valid)}
        per_entry = [row | {"judge_score": score} for row, score in zip(per_entry, scores)]
    atomic_write_text(scores_file, json.dumps(per_entry, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(metrics_file, json.dumps(metrics, indent=2) + "\n")
    # the perplexity is exp of the loss: logged, not a second column to compare
    log_evaluation(pipeline_tracking(params, "instruct"), model_dir, "evaluate-instructions",
                   metrics | {"test_perplexity": measured["perplexity"]}, runtime.describe(), [scores_file])
    return metrics | {"test_perplexity": measured["perplexity"]}
