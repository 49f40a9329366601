"""The book's own code on the pipeline's recipe, for the numbers README sets beside gptcore's.

Runs the PyPI package `llms-from-scratch` (install with --no-deps) exactly as its chapters do: its
GPTModel built after torch.manual_seed(train.seed), its create_dataloader_v1 on the prepared splits
(data/prepared/, from `dvc repro prepare`), AdamW(model.parameters()), and either appendix D's
train_model (warmup, cosine, clipping after warmup: the pipeline's default recipe) or, with
--chapter5, chapter 5's train_model_simple (constant learning rate, no clipping). Prints the last
evaluation, the lowest validation loss and the losses over the whole splits, as JSON.

With --gptcore-order the book's loop gets gptcore's batch order (its seeded per-epoch shuffle) from
loaders that draw nothing from the global generator; the book's own DataLoaders draw a seed from it at
every pass and evaluation, which shifts every later dropout mask. The two runs then see the same
batches and the same dropout masks, and differ only by floating-point rounding.

    python benchmarks/book_reference.py                 # params.yaml's recipe through appendix D
    python benchmarks/book_reference.py --gptcore-order # ... on gptcore's batches and dropout masks
    python benchmarks/book_reference.py --chapter5      # chapter 5: lr 4e-4, 10 epochs, no schedule
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader


class PassOrder(torch.utils.data.Sampler):
    """gptcore's per-epoch order, moving to the next epoch when a pass runs to its end (a training
    pass); the book's evaluations stop early inside a pass and leave the epoch as it is."""

    def __init__(self, length: int, seed: int, batch_size: int):
        from gptcore.data.loaders import EpochSampler

        self.epochs = EpochSampler(length, True, seed, batch_size)

    def __iter__(self):
        yield from self.epochs.order()
        self.epochs.set_position(self.epochs.epoch + 1)

    def __len__(self):
        return len(self.epochs)


def main() -> None:
    from llms_from_scratch.appendix_d import train_model
    from llms_from_scratch.ch02 import create_dataloader_v1
    from llms_from_scratch.ch04 import GPTModel
    from llms_from_scratch.ch05 import calc_loss_loader, train_model_simple

    from gptcore.model.tokenizer import Tokenizer
    from gptcore.params import load_params

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared", type=Path)
    parser.add_argument("--chapter5", action="store_true", help="train_model_simple with lr 4e-4, no schedule")
    parser.add_argument("--gptcore-order", action="store_true",
                        help="gptcore's batch order, and loaders that leave the global generator to dropout")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    params = load_params(args.params)
    train, config = params.train, params.model_config
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = {"vocab_size": config.vocab_size, "context_length": config.context_length, "emb_dim": config.emb_dim,
           "n_heads": config.n_heads, "n_layers": config.n_layers, "drop_rate": config.drop_rate,
           "qkv_bias": config.qkv_bias}
    torch.manual_seed(train.seed)
    model = GPTModel(cfg)
    context = config.context_length

    def loader(split: str, shuffle: bool, drop_last: bool):
        text = (args.prepared / f"{split}.txt").read_text(encoding="utf-8")
        book_loader = create_dataloader_v1(text, batch_size=train.batch_size, max_length=context, stride=context,
                                           shuffle=shuffle, drop_last=drop_last)
        if not args.gptcore_order:
            return book_loader
        order = PassOrder(len(book_loader.dataset), train.seed, train.batch_size) if shuffle else None
        return DataLoader(book_loader.dataset, batch_size=train.batch_size, sampler=order, drop_last=drop_last,
                          generator=torch.Generator().manual_seed(0))

    tokenizer = Tokenizer().encoding  # also points tiktoken at the offline mirror, for the book's loaders
    train_loader, val_loader = loader("train", True, True), loader("val", False, False)
    peak_lr = 4e-4 if args.chapter5 else train.peak_lr
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=train.weight_decay,
                                  betas=(train.beta1, train.beta2))
    started = time.perf_counter()
    if args.chapter5:
        train_losses, val_losses, _ = train_model_simple(
            model, train_loader, val_loader, optimizer, "cpu", num_epochs=10, eval_freq=train.eval_freq,
            eval_iter=train.eval_iter, start_context=train.sample_prompt, tokenizer=tokenizer)
    else:
        train_losses, val_losses, _, _ = train_model(
            model, train_loader, val_loader, optimizer, "cpu", n_epochs=train.epochs,
            eval_freq=train.eval_freq, eval_iter=train.eval_iter, start_context=train.sample_prompt,
            tokenizer=tokenizer, warmup_steps=train.warmup_steps, initial_lr=train.initial_lr,
            min_lr=train.min_lr)
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        whole_train = calc_loss_loader(loader("train", False, False), model, "cpu")
        whole_val = calc_loss_loader(val_loader, model, "cpu")
    lowest = min(range(len(val_losses)), key=val_losses.__getitem__)
    print(json.dumps({"recipe": "chapter 5 (train_model_simple)" if args.chapter5 else "appendix D (train_model)",
                      "batch_order": "gptcore's" if args.gptcore_order else "the book's DataLoader",
                      "last_eval": {"train_loss": train_losses[-1], "val_loss": val_losses[-1]},
                      "lowest_val_loss": {"value": val_losses[lowest], "eval_index": lowest},
                      "whole_splits": {"train_loss": whole_train, "val_loss": whole_val},
                      "train_seconds": seconds, "threads": torch.get_num_threads()}, indent=2))


if __name__ == "__main__":
    main()
