"""The book's DPO notebook against gptcore's, in one process: from the same SFT weights on the same batches (the
training split in order on both sides), the notebook's train_model_dpo_simple (its functions run from
dpo-from-scratch.ipynb in the mirror, the reference recomputed in every step) timed against gptcore's Trainer on the
PreferenceTuning task with the reference precomputed (the default) and per step; every evaluation's losses and
rewards compared, and each loop's tokens per second over the epoch (the padded chosen + rejected positions its
steps compute, as the notebook's tokens_seen counts them, over the wall time from the SFT weights to the end of the
epoch: gptcore's precomputing included).

    PYTHONPATH=. python benchmarks/preference_reference.py --base models --train-entries 80
    python benchmarks/preference_reference.py --base gpt2-small --sft-steps 232 --device cuda   # a GPU machine

--base is a gptcore model folder, or a preset name (weights initialised with seed 123); --sft-steps first tunes it on
the book's instruction data with gptcore (the notebook starts from gpt2-medium tuned by chapter 7). The notebook's
settings: AdamW 5e-6, weight decay 0.01, beta 0.1, batch 8, an evaluation every 5 steps on 5 batches of each split.
fp32 on both sides; on CUDA with TF32 off, so the comparison holds to 1e-5. Needs the book's package (pip install
--no-deps llms-from-scratch) and the mirror (GPTCORE_MIRROR, default ../shared).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.dpo_notebook import notebook_functions
from gptcore.data.instructions import prepare_instructions, read_split
from gptcore.formats.book import book_model
from gptcore.formats.loading import load_model
from gptcore.machine import cpu_model
from gptcore.model.gpt import GPT, ModelConfig
from gptcore.model.runtime import setup_runtime
from gptcore.model.tokenizer import Tokenizer
from gptcore.settings.instruct import INSTRUCT_TRAIN_DEFAULTS, InstructConfig
from gptcore.settings.preference import PREFERENCE_TRAIN_DEFAULTS, PreferenceConfig
from gptcore.settings.train import TrainConfig
from gptcore.tasks.instruction_tuning import InstructionTuning, Template, encode_entries
from gptcore.tasks.preference_tuning import PreferenceTuning, encode_preferences
from gptcore.training import trainer as trainer_module
from gptcore.training.trainer import Trainer

COMPARED = (("train_loss", "train_losses"), ("val_loss", "val_losses"), ("train_chosen_reward", "train_chosen_rewards"),
            ("val_chosen_reward", "val_chosen_rewards"), ("train_rejected_reward", "train_rejected_rewards"),
            ("val_rejected_reward", "val_rejected_rewards"))


def without_tf32(setup):
    """setup_runtime that leaves CUDA's fp32 matmuls in fp32: TF32's 10-bit products would part the two loops by
    ~1e-3, hiding what the comparison is for."""
    def setup_runtime_fp32(*args, **kwargs):
        runtime = setup(*args, **kwargs)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        return runtime
    return setup_runtime_fp32


def sft_weights(args, tokenizer) -> GPT:
    """The base, tuned for --sft-steps steps on the book's instructions by gptcore when asked."""
    if Path(args.base).exists():
        model = load_model(args.base, drop_rate=0.0)
    else:  # untied, as the book's GPTModel: one tied tensor would take the head's and the embedding's updates
        torch.manual_seed(123)
        model = GPT(ModelConfig.from_preset(args.base, drop_rate=0.0, tie_embeddings=False))
    if model.config.tie_embeddings:
        raise SystemExit(f"{args.base}: its embedding and head are one tensor, the book's GPTModel has two; start from "
                         "an untied model (this project's models/, or a preset)")
    if args.sft_steps:
        folder = Path(tempfile.mkdtemp())
        prepare_instructions(InstructConfig(), folder)
        template = Template.of(InstructConfig())
        train, val = (encode_entries(read_split(folder, name), template, tokenizer) for name in ("train", "validation"))
        settings = TrainConfig(**{**INSTRUCT_TRAIN_DEFAULTS, "epochs": None, "max_steps": args.sft_steps,
                                  "precision": "fp32", "device": args.device})
        history = Trainer(model, settings, InstructionTuning(train, val, InstructConfig())).fit()
        print(f"SFT: {args.sft_steps} steps, last evaluation {history['evals'][-1]}", flush=True)
    return model.cpu().eval()


def tokens_per_epoch(loader) -> int:
    return sum(batch["chosen"].numel() + batch["rejected"].numel() for batch in loader)


def notebook_run(notebook, sft: GPT, parts: dict, args) -> dict:
    """train_model_dpo_simple as the notebook calls it, on its loaders in order, with the book's GPTModel."""
    collate = partial(notebook["custom_collate_fn"], device=args.device, mask_prompt_tokens=True,
                      allowed_max_length=min(1024, sft.config.context_length))
    tokenizer = Tokenizer().encoding
    loaders = [DataLoader(notebook["PreferenceDataset"](parts[name], tokenizer), batch_size=8, shuffle=False,
                          drop_last=drop_last, collate_fn=collate)
               for name, drop_last in (("train", True), ("validation", False))]
    synchronize(args.device)
    started = time.perf_counter()
    policy = book_model(sft).to(args.device)
    reference = book_model(sft).to(args.device).eval()
    torch.manual_seed(123)
    # --fused-adamw: the Trainer's fused AdamW in place of the notebook's default (foreach on CUDA): the same update,
    # rounded in another order
    optimizer = torch.optim.AdamW(policy.parameters(), lr=5e-6, weight_decay=0.01, fused=args.fused_adamw or None)
    tracking = notebook["train_model_dpo_simple"](policy, reference, *loaders, optimizer, num_epochs=1, beta=0.1,
                                                  eval_freq=args.eval_freq, eval_iter=args.eval_iter,
                                                  start_context="", tokenizer=None)
    synchronize(args.device)
    seconds = time.perf_counter() - started
    tokens = tokens_per_epoch(loaders[0])
    return {"seconds": seconds, "tokens": tokens, "tokens_per_second": tokens / seconds,
            **{theirs: tracking[theirs] for _, theirs in COMPARED}}


def gptcore_run(sft: GPT, parts: dict, reference: str, args, tokenizer) -> dict:
    config = PreferenceConfig(reference=reference)
    template = Template.of(InstructConfig())
    settings = TrainConfig(**{**PREFERENCE_TRAIN_DEFAULTS, "shuffle": False, "eval_freq": args.eval_freq,
                              "eval_iter": args.eval_iter, "precision": "fp32", "device": args.device})
    encoded = [encode_preferences(parts[name], template, tokenizer, config.mask) for name in ("train", "validation")]
    synchronize(args.device)
    started = time.perf_counter()
    trainer = Trainer(copy.deepcopy(sft), settings, PreferenceTuning(*encoded, config))
    history = trainer.fit()
    synchronize(args.device)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "reference_seconds": trainer.task.reference_seconds, "steps": len(history["steps"]),
            "evals": history["evals"]}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def compare(book: dict, ours: dict, eval_freq: int) -> dict:
    """The largest gap of each compared value over the evaluations (the notebook evaluates after its steps 1,
    1 + eval_freq, ...; gptcore numbers steps from 1 as well)."""
    evals = {e["step"]: e for e in ours["evals"]}
    steps = [step for step in range(1, ours["steps"] + 1) if (step - 1) % eval_freq == 0]
    assert len(steps) == len(book["train_losses"]), (steps, len(book["train_losses"]))
    gaps = {key: max(abs(evals[step][key] - value) for step, value in zip(steps, book[theirs]))
            for key, theirs in COMPARED}
    by_evaluation = [max(abs(evals[step][key] - book[theirs][index]) for key, theirs in COMPARED)
                     for index, step in enumerate(steps)]
    return {"evaluations": len(steps), "largest_gap": max(gaps.values()), "gaps": gaps,
            "largest_gap_by_evaluation": by_evaluation,
            "last": {"step": steps[-1], "notebook_val_margin": book["val_chosen_rewards"][-1] -
                     book["val_rejected_rewards"][-1], "gptcore_val_margin": evals[steps[-1]]["val_reward_margin"],
                     "notebook_val_loss": book["val_losses"][-1], "gptcore_val_loss": evals[steps[-1]]["val_loss"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="models", help="gptcore model folder, or a preset to initialise (seed 123)")
    parser.add_argument("--sft-steps", type=int, default=0, help="steps of instruction tuning of the base first")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--train-entries", type=int, default=None, help="the first entries of the training split "
                        "(default: all 935, the notebook's epoch)")
    parser.add_argument("--eval-freq", type=int, default=5)
    parser.add_argument("--eval-iter", type=int, default=5)
    parser.add_argument("--fused-adamw", action="store_true", help="the notebook's loop with fused AdamW, as gptcore's")
    parser.add_argument("--json", default="benchmarks/results-preference.json", help="where the results go")
    args = parser.parse_args()
    mirror = Path(os.environ.get("GPTCORE_MIRROR", Path(__file__).resolve().parents[1].parent / "shared"))
    runtime = setup_runtime(args.device, "fp32")
    if args.device == "cuda":
        trainer_module.setup_runtime = without_tf32(trainer_module.setup_runtime)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    tokenizer = Tokenizer()
    notebook = notebook_functions(mirror)
    parts = {"train": notebook["train_data"][:args.train_entries], "validation": notebook["val_data"]}
    sft = sft_weights(args, tokenizer)
    result = {"machine": torch.cuda.get_device_name(0) if args.device == "cuda" else cpu_model(),
              "torch": torch.__version__, "threads": runtime.threads, "base": args.base, "sft_steps": args.sft_steps,
              "parameters": sum(p.numel() for p in sft.parameters()), "precision": "fp32",
              "train_entries": len(parts["train"]), "eval_freq": args.eval_freq, "eval_iter": args.eval_iter,
              "notebook_adamw": "fused" if args.fused_adamw else "default"}
    book = notebook_run(notebook, sft, parts, args)
    result["notebook"] = {k: book[k] for k in ("seconds", "tokens", "tokens_per_second")}
    print(json.dumps(result, indent=2), flush=True)
    for reference in ("precomputed", "per_step"):
        ours = gptcore_run(sft, parts, reference, args, tokenizer)
        result[reference] = {"seconds": ours["seconds"], "reference_seconds": ours["reference_seconds"],
                             "tokens_per_second": book["tokens"] / ours["seconds"],
                             "speedup": book["seconds"] / ours["seconds"], **compare(book, ours, args.eval_freq)}
        print(json.dumps({reference: result[reference]}, indent=2), flush=True)
    result["precomputing_saves"] = 1 - result["precomputed"]["seconds"] / result["per_step"]["seconds"]
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
