"""Language modeling, the pretraining task (the book's chapter 5): next-token prediction on windows of a
token stream, the batches and evaluation it gives the one training loop."""

from __future__ import annotations

import numpy as np

from ..data.loaders import GPTDataset, RandomWindows, make_dataloader
from ..evaluation.loss import evaluate_loss
from ..training.task import Task


class LanguageModeling(Task):
    """Next-token prediction on windows of a token stream: the book's sliding windows or nanoGPT's random
    ones (train.windows); evaluation is the loss of the first eval_iter batches of each split, and the zero-shot
    probe's benchmarks when one is given."""

    def __init__(self, train_tokens: np.ndarray, val_tokens: np.ndarray, zero_shot=None):
        self.train_tokens, self.val_tokens, self.zero_shot = train_tokens, val_tokens, zero_shot

    def bind(self, model, config, runtime, ranks, pin_memory: bool) -> None:
        context = self.row_tokens = model.config.context_length
        self.batch_size, self.world_size, self.pin_memory = config.batch_size, ranks.world_size, pin_memory
        self.train_windows = GPTDataset(self.train_tokens, context, config.stride or context, "train")
        self.val_windows = GPTDataset(self.val_tokens, context, context, "validation")
        self.train_loader = make_dataloader(self.train_windows, batch_size=config.batch_size, shuffle=config.shuffle,
                                            drop_last=config.drop_last, seed=config.seed, rank=ranks.rank,
                                            world_size=ranks.world_size, pin_memory=pin_memory)
        self.random_windows = RandomWindows(self.train_tokens, context, batch_size=config.batch_size,
                                            seed=config.seed, rank=ranks.rank, world_size=ranks.world_size,
                                            pin_memory=pin_memory) if config.windows == "random" else None
        self.draws_at_random = self.random_windows is not None

    def random_batch(self, index: int):
        return self.random_windows.batch(index)

    def evaluate(self, model, runtime, num_batches: int) -> dict:
        # batches of the global batch size, shared out between the processes by evaluate_loss
        loaders = [make_dataloader(windows, batch_size=self.batch_size * self.world_size, shuffle=False,
                                   drop_last=False, seed=0, split=split, pin_memory=self.pin_memory)
                   for windows, split in ((self.train_windows, "train"), (self.val_windows, "validation"))]
        train_loss, val_loss = (evaluate_loss(model, loader, num_batches=num_batches, runtime=runtime)
                                for loader in loaders)
        return {"train_loss": train_loss, "val_loss": val_loss}
