"""The book's chapter-6 fine-tuning against gptcore's, at full size, in one process: the same base weights
and batches (the training split in order on both sides), the book's train_classifier_simple timed against
gptcore's Trainer on the Classification task; every evaluation's losses and accuracies, the full-split
accuracies and classify_review's answers compared. Then LoRA (appendix E: rank 16, alpha 16 on every
linear layer, the package's alpha scaling, lr 5e-5: the notebook's 8e-4 with alpha / rank is the same
update) on both sides for --lora-steps steps: its losses compared, its step time beside full fine-tuning's.

    PYTHONPATH=. python benchmarks/classify_reference.py --base models --epochs 5 --lora-steps 60

--base is a gptcore model folder (default: the root pipeline's models/); the book's GPTModel gets its
weights through the book-file export. Needs the book's package (pip install --no-deps llms-from-scratch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from gptcore.data.labelled import SPLITS, prepare_labelled, read_split
from gptcore.data.loaders import make_dataloader
from gptcore.formats.book import book_model
from gptcore.formats.loading import load_model
from gptcore.machine import cpu_model
from gptcore.model.lora import apply_lora
from gptcore.model.runtime import setup_runtime
from gptcore.model.tokenizer import Tokenizer
from gptcore.pipelines.classify import encode_splits
from gptcore.settings.classify import CLASSIFY_TRAIN_DEFAULTS, ClassifyConfig
from gptcore.settings.lora import LoraConfig
from gptcore.settings.train import TrainConfig
from gptcore.tasks.classification import (Classification, EncodedSplit, SequenceClassifier, attach_head, classify,
                                          freeze, score)
from gptcore.training.trainer import Trainer


def book_classifier(base, lora: bool):
    """The book's GPTModel holding base's weights, modified as chapter 6 (or appendix E) does."""
    from llms_from_scratch.appendix_e import replace_linear_with_lora

    model = book_model(base)
    for parameter in model.parameters():
        parameter.requires_grad = False
    torch.manual_seed(123)
    model.out_head = torch.nn.Linear(base.config.emb_dim, 2)
    if lora:
        for parameter in model.parameters():
            parameter.requires_grad = False
        torch.manual_seed(321)
        replace_linear_with_lora(model, rank=16, alpha=16)
    else:
        for part in (model.trf_blocks[-1], model.final_norm):
            for parameter in part.parameters():
                parameter.requires_grad = True
    return model


def ours_classifier(model, lora: bool):
    """gptcore's transform of the same base (in place), with the same seeds."""
    torch.manual_seed(123)
    attach_head(model, 2)
    if lora:
        torch.manual_seed(321)
        apply_lora(model, LoraConfig(rank=16, alpha=16.0))
    else:
        freeze(model, "last_block")
    return model


def first_rows(split: EncodedSplit, rows: int) -> EncodedSplit:
    return EncodedSplit(split.ids[:rows], split.labels[:rows], split.positions[:rows], split.truncated)


def compare(history: dict, book_train: list, book_val: list, eval_freq: int) -> tuple[int, float]:
    """(evaluations compared, the largest loss gap) at the book's evaluation steps."""
    evals = {e["step"]: e for e in history["evals"]}
    steps = [s for s in range(1, len(history["steps"]) + 1) if (s - 1) % eval_freq == 0]
    gaps = [abs(evals[s][key] - values[i]) for i, s in enumerate(steps)
            for key, values in (("train_loss", book_train), ("val_loss", book_val))]
    return len(steps), max(gaps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="models", help="gptcore model folder to start from (default: models)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of full fine-tuning (default: the book's 5)")
    parser.add_argument("--lora-steps", type=int, default=60, help="LoRA steps on each side (default: 60)")
    parser.add_argument("--parts", nargs="+", choices=("full", "lora"), default=["full", "lora"],
                        help="what to run (default: both); the results of a part not run are kept from --json")
    parser.add_argument("--json", default="benchmarks/results-classify.json", help="where the results go")
    args = parser.parse_args()
    from llms_from_scratch.ch06 import SpamDataset

    runtime = setup_runtime("cpu", "fp32")
    tokenizer = Tokenizer()
    folder = Path(tempfile.mkdtemp())
    prepare_labelled(ClassifyConfig(), folder)
    base = load_model(args.base, drop_rate=0.0)
    # the longest training text (120 tokens), as the book's SpamDataset(max_length=None), within the context
    splits, length = encode_splits(folder, SPLITS, None, base.config.context_length, 50256, "last", tokenizer)
    datasets = {}
    for name in SPLITS:
        read_split(folder, name).rename(columns={"text": "Text", "label": "Label"})[["Label", "Text"]].to_csv(
            folder / f"book-{name}.csv", index=None)
        datasets[name] = SpamDataset(folder / f"book-{name}.csv", tokenizer.encoding, max_length=length)
    loaders = {name: DataLoader(datasets[name], batch_size=8, shuffle=False, drop_last=name == "train")
               for name in SPLITS}
    kept = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    result = kept | {"machine": cpu_model(), "torch": torch.__version__, "threads": runtime.threads,
                     "base": args.base, "precision": "fp32", "max_length": length}
    if "full" in args.parts:
        result["full"] = full_fine_tuning(args, base, datasets, loaders, splits, length, tokenizer, runtime, folder)
    if "lora" in args.parts:
        result["lora"] = lora_fine_tuning(args, base, datasets, loaders, splits)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def full_fine_tuning(args, base, datasets, loaders, splits, length, tokenizer, runtime, folder) -> dict:
    from llms_from_scratch.ch06 import calc_accuracy_loader, classify_review, train_classifier_simple

    # chapter 6: the whole fine-tuning with its evaluations, both sides
    book = book_classifier(base, lora=False)
    optimizer = torch.optim.AdamW(book.parameters(), lr=5e-5, weight_decay=0.1)
    started = time.perf_counter()
    book_train, book_val, book_train_acc, book_val_acc, _ = train_classifier_simple(
        book, loaders["train"], loaders["validation"], optimizer, "cpu", num_epochs=args.epochs, eval_freq=50,
        eval_iter=5)
    book_seconds = time.perf_counter() - started
    model = ours_classifier(load_model(args.base, drop_rate=0.0), lora=False)
    config = TrainConfig(**{**CLASSIFY_TRAIN_DEFAULTS, "epochs": args.epochs, "shuffle": False, "precision": "fp32",
                            "device": "cpu"})
    started = time.perf_counter()
    history = Trainer(model, config, Classification(splits["train"], splits["validation"])).fit()
    ours_seconds = time.perf_counter() - started
    evaluations, gap = compare(history, book_train, book_val, 50)
    classifier = SequenceClassifier(model.eval())
    texts = read_split(folder, "test")["text"].tolist()
    info = {"labels": ["not spam", "spam"], "position": "last", "max_length": length, "pad_id": 50256}
    ours_answers = [row["label"] for row in classify(classifier, info, texts, tokenizer, runtime)]
    book_answers = [classify_review(text, book.eval(), tokenizer.encoding, "cpu", max_length=length) for text in texts]
    full = {
        "epochs": args.epochs, "steps": len(history["steps"]), "book_seconds": book_seconds,
        "gptcore_seconds": ours_seconds, "speedup": book_seconds / ours_seconds, "evaluations": evaluations,
        "largest_loss_gap": gap,
        "epoch_accuracies_equal": [e["train_accuracy"] for e in history["epochs"]] == book_train_acc and
        [e["val_accuracy"] for e in history["epochs"]] == book_val_acc,
        "book_accuracy": {name: calc_accuracy_loader(DataLoader(datasets[name], batch_size=8), book, "cpu")
                          for name in SPLITS},
        "gptcore_accuracy": {name: score(classifier, make_dataloader(split.dataset(), batch_size=8, shuffle=False,
                                                                     drop_last=False, seed=0),
                                         num_batches=None, runtime=runtime)["accuracy"]
                             for name, split in splits.items()},
        "classify_review_equal": sum(a == b for a, b in zip(ours_answers, book_answers)), "test_texts": len(texts),
        "gptcore_median_step_seconds": statistics.median(s["step_seconds"] for s in history["steps"]),
        "book": {"train_losses": book_train, "val_losses": book_val, "train_accuracies": book_train_acc,
                 "val_accuracies": book_val_acc},
    }
    print(json.dumps({k: v for k, v in full.items() if k != "book"}, indent=2), flush=True)
    return full


def lora_fine_tuning(args, base, datasets, loaders, splits) -> dict:
    """Appendix E: LoRA on every linear layer, --lora-steps steps of the training split in order."""
    from llms_from_scratch.ch06 import train_classifier_simple

    rows = args.lora_steps * 8
    book = book_classifier(base, lora=True)
    optimizer = torch.optim.AdamW(book.parameters(), lr=5e-5, weight_decay=0.1)
    started = time.perf_counter()
    book_train, book_val, *_ = train_classifier_simple(
        book, DataLoader(Subset(datasets["train"], range(rows)), batch_size=8), loaders["validation"], optimizer,
        "cpu", num_epochs=1, eval_freq=10, eval_iter=5)
    book_lora_seconds = time.perf_counter() - started
    model = ours_classifier(load_model(args.base, drop_rate=0.0), lora=True)
    config = TrainConfig(**{**CLASSIFY_TRAIN_DEFAULTS, "epochs": 1, "eval_freq": 10, "shuffle": False,
                            "precision": "fp32", "device": "cpu"})
    started = time.perf_counter()
    lora_history = Trainer(model, config, Classification(first_rows(splits["train"], rows), splits["validation"])).fit()
    ours_lora_seconds = time.perf_counter() - started
    evaluations, gap = compare(lora_history, book_train, book_val, 10)
    lora = {
        "steps": args.lora_steps, "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "book_seconds": book_lora_seconds, "gptcore_seconds": ours_lora_seconds, "evaluations": evaluations,
        "largest_loss_gap": gap,
        "gptcore_median_step_seconds": statistics.median(s["step_seconds"] for s in lora_history["steps"]),
        "book": {"train_losses": book_train, "val_losses": book_val}, "gptcore": {"evals": lora_history["evals"]},
    }
    print(json.dumps({k: v for k, v in lora.items() if k not in ("book", "gptcore")}, indent=2))
    return lora


if __name__ == "__main__":
    main()
