"""What the training loop reports (per step, per evaluation, per sample) and the console's view of it.

Tracking (gptcore.tracking) and tests plug in here, so the trainer knows nothing of MLflow.
"""

from __future__ import annotations

import sys

from tqdm import tqdm


class TrainerCallback:
    def on_train_start(self, step: int, plan: dict): ...

    def on_step(self, record: dict): ...

    def on_eval(self, record: dict): ...

    def on_epoch(self, record: dict): ...

    def on_sample(self, record: dict): ...

    def on_zero_shot(self, record: dict): ...

    def on_train_end(self, history: dict): ...


# where and when a record was made; its other keys are what was measured
RECORD_KEYS = ("step", "epoch", "tokens_seen")


def measured(record: dict) -> str:
    """A record's measurements for the console: accuracies in per cent (accuracy, lambada_acc, ...)."""
    return " | ".join(f"{key.replace('_', ' ')} {value:.2%}" if key.endswith("accuracy") or "_acc" in key else
                      f"{key.replace('_', ' ')} {value:.3f}" for key, value in record.items() if key not in RECORD_KEYS)


def plan_line(plan: dict) -> str:
    """The run's plan for the console: `plan: 90 steps (10 epochs of 9), 2 rows of 256 tokens each: 46,080 tokens`."""
    length = "random windows" if plan["epochs"] is None else f"{plan['epochs']:g} epochs of {plan['steps_per_epoch']:,}"
    each = f"{'at most ' if plan['rows_vary'] else ''}{plan['row_tokens']:,} tokens"
    return (f"plan: {plan['steps']:,} steps ({length}), {plan['rows_per_step']:,} rows of {each} each: "
            f"{'at most ' if plan['rows_vary'] else ''}{plan['tokens']:,} tokens")


class PrintProgress(TrainerCallback):
    """The book's console log (losses at each evaluation, the sample text at each epoch end) and, on a
    terminal only, a progress bar with the loss, tokens/s and the time left."""

    def __init__(self, bar: bool | None = None):
        self.show_bar = sys.stderr.isatty() if bar is None else bar
        self.bar = None

    def on_train_start(self, step: int, plan: dict):
        self._print(plan_line(plan) + (f", resumed at step {step:,}" if step else ""))
        self.bar = tqdm(total=plan["steps"], initial=step, unit="step", desc="train", disable=not self.show_bar,
                        dynamic_ncols=True)

    def on_step(self, record: dict):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['train_loss']:.3f}",
                                 tokens_per_s=f"{record['tokens_per_second']:,.0f}", refresh=False)
            self.bar.update()

    def on_eval(self, record: dict):
        self._print(f"step {record['step']:6d} | tokens {record['tokens_seen']:9,d} | train loss "
                    f"{record['train_loss']:.3f} | val loss {record['val_loss']:.3f}")

    def on_epoch(self, record: dict):
        self._print(f"epoch {record['epoch'] + 1} | {measured(record)}")

    def on_sample(self, record: dict):
        self._print(f"epoch {record['epoch'] + 1} sample: {record['text']}")

    def on_zero_shot(self, record: dict):
        self._print(f"step {record['step']:6d} | zero-shot | {measured(record)}")

    def on_train_end(self, history: dict):
        if self.bar is not None:
            self.bar.close()

    @staticmethod
    def _print(line: str):
        tqdm.write(line)  # above the bar, which stays at the bottom
        sys.stdout.flush()
