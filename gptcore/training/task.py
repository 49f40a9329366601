"""What a training task gives the one training loop (gptcore.training.trainer): its batches, the module whose
forward returns the loss, and what evaluation measures. The loop owns this interface; the tasks
(gptcore.tasks) implement it.

A batch is the training module's positional arguments: inputs first (token ids, or the cached output of
a frozen prefix), then the targets its loss needs.
"""

from __future__ import annotations


class Task:
    """The interface: `bind` builds the loaders for a run; the rest is called by the Trainer."""
    train_loader = None  # a DataLoader over an EpochSampler (exact epochs, exact resume)
    draws_at_random = False  # True: batches come from random_batch, and there are no epochs
    zero_shot = None  # a ZeroShotProbe (gptcore.evaluation.zero_shot): benchmarks run every probe.every steps
    row_tokens = None  # the tokens of every row of a batch, set by bind where all rows have as many; None: they vary

    def bind(self, model, config, runtime, ranks, pin_memory: bool) -> None:
        raise NotImplementedError

    def random_batch(self, index: int):
        """The index-th batch when draws_at_random (a pure function of the index: resume is exact)."""
        raise NotImplementedError

    def training_module(self, model):
        """The module the step calls with a batch: forward(*batch) -> (outputs, loss)."""
        return model

    def evaluate(self, model, runtime, num_batches: int) -> dict:
        """The periodic evaluation (every train.eval_freq steps): metric name -> value."""
        raise NotImplementedError

    def evaluate_epoch(self, model, runtime, num_batches: int) -> dict:
        """What is measured at each epoch end (the book's classifier: accuracies); empty: nothing."""
        return {}
