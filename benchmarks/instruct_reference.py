"""The book's chapter-7 instruction fine-tuning against gptcore's, at full size, in one process: the same base
weights and batches (the training split in order on both sides), the book's train_model_simple with its
custom_collate_fn timed against gptcore's Trainer on the InstructionTuning task, every evaluation's losses
compared; the same with the prompt masked out of the loss (its exercise 7.2) for --mask-steps steps; then
the test responses of the fine-tuned model: the book's generate (one entry at a time, no KV cache) against
gptcore's batched, KV-cached decoder at batch 1 and at --batch, token for token and in tokens per second;
the share of the computed positions that are padding; and (--parts grouping) what length-grouped batches
save against the shuffled ones.

    PYTHONPATH=. python benchmarks/instruct_reference.py --base models --epochs 2 --mask-steps 60

--base is a gptcore model folder (default: the root pipeline's models/); the book's GPTModel gets its
weights through the book-file export. Needs the book's package (pip install --no-deps llms-from-scratch).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from gptcore.data.instructions import prepare_instructions, read_split
from gptcore.data.loaders import EpochSampler, LengthGroupedSampler
from gptcore.formats.book import book_model
from gptcore.formats.loading import load_model
from gptcore.machine import cpu_model
from gptcore.model.runtime import setup_runtime
from gptcore.model.sampling import generate_batched, new_token_budget
from gptcore.model.tokenizer import Tokenizer
from gptcore.settings.instruct import INSTRUCT_TRAIN_DEFAULTS, InstructConfig
from gptcore.settings.train import TrainConfig
from gptcore.tasks.instruction_tuning import InstructionTuning, Template, encode_entries, padding_share
from gptcore.training.trainer import Trainer


def book_loaders(encoded: dict, mask_prompt: bool, limit: int, train_entries: int):
    """The book's loaders (batch 8, the training split in order): custom_collate_fn, and for the masked
    run its exercise's custom_collate_with_masking_fn (the targets of the prompt but its last token -100)."""
    from llms_from_scratch.ch07 import custom_collate_fn

    def masking(batch):
        inputs, targets = custom_collate_fn([ids for ids, _ in batch], allowed_max_length=limit)
        for row, (_, prompt_length) in enumerate(batch):
            targets[row, :prompt_length - 1] = -100
        return inputs, targets

    collate_fn = masking if mask_prompt else partial(custom_collate_fn, allowed_max_length=limit)
    loaders = []
    for name, drop_last in (("train", True), ("validation", False)):
        items = encoded[name].items()[:train_entries] if name == "train" else encoded[name].items()
        loaders.append(DataLoader(items if mask_prompt else [ids for ids, _ in items], batch_size=8, shuffle=False,
                                  drop_last=drop_last, collate_fn=collate_fn))
    return loaders


def fine_tune(args, encoded: dict, val_prompt: str, tokenizer, mask_prompt: bool, steps: int | None):
    """Both loops from the same weights on the same batches: (losses at the book's evaluation steps and wall
    times, gptcore's fine-tuned model)."""
    from llms_from_scratch.ch05 import train_model_simple

    base = load_model(args.base, drop_rate=0.0)
    limit = base.config.context_length
    train_entries = steps * 8 if steps else len(encoded["train"].ids)
    epochs = 1 if steps else args.epochs
    book = book_model(base)
    optimizer = torch.optim.AdamW(book.parameters(), lr=5e-5, weight_decay=0.1)
    started = time.perf_counter()
    book_train, book_val, _ = train_model_simple(book, *book_loaders(encoded, mask_prompt, limit, train_entries),
                                                 optimizer, "cpu", num_epochs=epochs, eval_freq=5, eval_iter=5,
                                                 start_context=val_prompt, tokenizer=tokenizer.encoding)
    book_seconds = time.perf_counter() - started
    config = InstructConfig(mask_prompt=mask_prompt)
    train = encoded["train"]
    train = type(train)(train.ids[:train_entries], train.prompt_lengths[:train_entries])
    settings = TrainConfig(**{**INSTRUCT_TRAIN_DEFAULTS, "epochs": epochs, "shuffle": False, "precision": "fp32",
                              "device": "cpu"})
    started = time.perf_counter()
    trainer = Trainer(base, settings, InstructionTuning(train, encoded["validation"], config))
    history = trainer.fit()
    ours_seconds = time.perf_counter() - started
    evals = {e["step"]: e for e in history["evals"]}
    book_steps = [s for s in range(1, len(history["steps"]) + 1) if (s - 1) % 5 == 0]
    gaps = [abs(evals[s][key] - values[i]) for i, s in enumerate(book_steps)
            for key, values in (("train_loss", book_train), ("val_loss", book_val))]
    tokens = trainer.tokens_seen
    result = {"mask_prompt": mask_prompt, "epochs": epochs, "steps": len(history["steps"]),
              "evaluations": len(book_steps), "largest_loss_gap": max(gaps), "training_tokens": tokens,
              "book_seconds": book_seconds, "gptcore_seconds": ours_seconds,
              "book_tokens_per_second": tokens / book_seconds, "gptcore_tokens_per_second": tokens / ours_seconds,
              "speedup": book_seconds / ours_seconds,
              "first_eval": {"book": [book_train[0], book_val[0]],
                             "gptcore": [evals[1]["train_loss"], evals[1]["val_loss"]]},
              "last_eval": {"step": book_steps[-1], "book": [book_train[-1], book_val[-1]],
                            "gptcore": [evals[book_steps[-1]]["train_loss"], evals[book_steps[-1]]["val_loss"]]},
              "book": {"train_losses": book_train, "val_losses": book_val}}
    print(json.dumps({k: v for k, v in result.items() if k != "book"}, indent=2), flush=True)
    return result, base


def responses(args, model, entries: list[dict], tokenizer) -> dict:
    """The book's generate against generate_batched at batch 1 and at --batch, on the same fine-tuned weights."""
    from llms_from_scratch.ch05 import generate

    template, context = Template.of(InstructConfig()), model.config.context_length
    model.eval()
    prompts = [tokenizer.encode(template.format_prompt(e["instruction"], e["input"])) for e in entries]
    budgets = [new_token_budget(len(p), context, 256) for p in prompts]  # the book's generate slides past it
    book = book_model(model).eval()
    subset = prompts[:args.book_responses]
    started = time.perf_counter()
    book_tokens = []
    for prompt, budget in zip(subset, budgets):
        out = generate(book, torch.tensor([prompt]), max_new_tokens=budget, context_size=context, eos_id=50256)
        book_tokens.append(out[0, len(prompt):].tolist())
    book_seconds = time.perf_counter() - started
    timed = {}
    for batch in (1, args.batch):
        for name, chosen in (("subset", subset), ("all", prompts)):
            started = time.perf_counter()
            tokens = generate_batched(model, chosen, 256, eos_id=50256, batch_size=batch)
            timed[(batch, name)] = (tokens, time.perf_counter() - started)
    one, batched = timed[(1, "all")][0], timed[(args.batch, "all")][0]
    book_rate = sum(map(len, book_tokens)) / book_seconds
    rates = {f"{name}_batch_{batch}": sum(map(len, tokens)) / seconds for (batch, name), (tokens, seconds) in timed.items()}
    result = {"responses": len(prompts), "book_responses": len(subset),
              "batch_1_equal_to_book": sum(a == b for a, b in zip(one, book_tokens)),
              f"batch_{args.batch}_equal_to_batch_1": sum(a == b for a, b in zip(one, batched)),
              "generated_tokens": sum(map(len, one)), "longest_response_tokens": max(map(len, one)),
              "ended_at_end_of_text": sum(len(t) < b for t, b in zip(one, budgets)),
              "book_seconds": book_seconds, "book_tokens_per_second": book_rate,
              **{f"gptcore_tokens_per_second_{k}": v for k, v in rates.items()},
              f"speedup_batch_{args.batch}": rates[f"subset_batch_{args.batch}"] / book_rate,
              "speedup_batch_1": rates["subset_batch_1"] / book_rate}
    print(json.dumps(result, indent=2), flush=True)
    return result


def grouping(args, encoded: dict) -> dict:
    """gptcore's loop on the pipeline's shuffled batches against length-grouped ones (instruct.group_by_length),
    --grouping-steps steps each from the same weights, no evaluations: time per step and positions computed."""
    result = {}
    for grouped in (False, True):
        config = InstructConfig(group_by_length=grouped)
        settings = TrainConfig(**{**INSTRUCT_TRAIN_DEFAULTS, "max_steps": args.grouping_steps,
                                  "eval_freq": 10 * args.grouping_steps, "precision": "fp32", "device": "cpu"})
        trainer = Trainer(load_model(args.base, drop_rate=0.0), settings,
                          InstructionTuning(encoded["train"], encoded["validation"], config))
        started = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - started
        result["grouped" if grouped else "shuffled"] = {"steps": args.grouping_steps, "seconds": seconds,
                                                        "positions": trainer.tokens_seen}
    result["time_saved"] = 1 - result["grouped"]["seconds"] / result["shuffled"]["seconds"]
    result["positions_saved"] = 1 - result["grouped"]["positions"] / result["shuffled"]["positions"]
    print(json.dumps(result, indent=2), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="models", help="gptcore model folder to start from (default: models)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of fine-tuning (default: the book's 2)")
    parser.add_argument("--mask-steps", type=int, default=60, help="steps of the masked run on each side")
    parser.add_argument("--book-responses", type=int, default=110, help="test responses the book's generate makes")
    parser.add_argument("--batch", type=int, default=16, help="gptcore's decoding batch (default: 16)")
    parser.add_argument("--grouping-steps", type=int, default=40, help="steps of each order in the grouping part")
    parser.add_argument("--parts", nargs="+", choices=("full", "mask", "grouping"), default=["full", "mask"],
                        help="full: fine-tuning and the responses; mask: with mask_prompt; grouping: shuffled "
                             "against length-grouped batches (the results of a part not run are kept from --json)")
    parser.add_argument("--json", default="benchmarks/results-instruct.json", help="where the results go")
    args = parser.parse_args()
    runtime = setup_runtime("cpu", "fp32")
    tokenizer = Tokenizer()
    folder = Path(tempfile.mkdtemp())
    prepare_instructions(InstructConfig(), folder)
    entries = {name: read_split(folder, name) for name in ("train", "validation", "test")}
    template = Template.of(InstructConfig())
    encoded = {name: encode_entries(part, template, tokenizer) for name, part in entries.items()}
    val_prompt = template.format_prompt(entries["validation"][0]["instruction"], entries["validation"][0]["input"])
    limit = load_model(args.base).config.context_length
    in_order = [list(range(i, i + 8)) for i in range(0, len(encoded["train"].ids) - 7, 8)]
    lengths = [len(ids) for ids in encoded["train"].ids]
    shuffled, grouped = ([order[i:i + 8] for i in range(0, len(order) - 7, 8)]
                         for order in (EpochSampler(len(lengths), True, 123).order(),
                                       LengthGroupedSampler(lengths, True, 123, batch_size=8).order()))
    kept = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    result = kept | {"machine": cpu_model(), "torch": torch.__version__, "threads": runtime.threads,
                     "base": args.base, "precision": "fp32",
                     "padding_share": {"in_order": padding_share(encoded["train"], in_order, limit),
                                       "shuffled_epoch": padding_share(encoded["train"], shuffled, limit),
                                       "grouped_epoch": padding_share(encoded["train"], grouped, limit)}}
    if "full" in args.parts:
        result["full"], tuned = fine_tune(args, encoded, val_prompt, tokenizer, mask_prompt=False, steps=None)
        result["generation"] = responses(args, tuned, entries["test"], tokenizer)
    if "mask" in args.parts:
        result["mask_prompt"], _ = fine_tune(args, encoded, val_prompt, tokenizer, mask_prompt=True,
                                             steps=args.mask_steps)
    if "grouping" in args.parts:
        result["grouping"] = grouping(args, encoded)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
