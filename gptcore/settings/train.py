"""params.yaml `train`: the training loop (gptcore.training.trainer), its length, optimizer, schedule and runtime.

The defaults are the book's recipe (appendix D's train_model on "The Verdict").
"""

from dataclasses import dataclass

from ..errors import ConfigError
from . import PRECISIONS, check_fields, setting

WINDOWS = ("sliding", "random")
# all: every parameter, as the book's AdamW(model.parameters(), weight_decay=...); matrices: 2-D weights
# and embeddings only, not biases and LayerNorms (GPT-2, nanoGPT)
DECAY_TARGETS = ("all", "matrices")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int | None = setting(10, "passes over the sliding windows ...", low=1)
    max_steps: int | None = setting(None, "... or a number of optimizer steps (wins when set)", low=1)
    batch_size: int = setting(2, "windows per process and micro-step", low=1)
    grad_accum_steps: int = setting(1, "micro-steps per optimizer step", low=1)
    windows: str = setting("sliding", "sliding: the book's windows, exact epochs | random: nanoGPT's get_batch, no "
                                      "epochs (set max_steps)", choices=WINDOWS)
    stride: int | None = setting(None, "between sliding windows; null = context_length (no overlap)", low=1)
    shuffle: bool = setting(True, "shuffle the sliding windows each epoch")
    drop_last: bool = setting(True, "drop an epoch's incomplete last batch")
    peak_lr: float = setting(5e-4, "the book uses 4e-4 ... 1e-3", low=0.0, high=1.0, low_open=True)
    initial_lr: float = setting(1e-5, "linear warmup from here ...", low=0.0, high=1.0)
    warmup_steps: int = setting(18, "... over 20 % of the 90 steps (the book's appendix D)", low=0)
    cosine_decay: bool = setting(True, "then cosine decay ...")
    min_lr: float = setting(1e-5, "... towards here (the book's formula ends one step short of it)", low=0.0,
                            high=1.0)
    weight_decay: float = setting(0.1, "AdamW ...", low=0.0, high=1.0)
    weight_decay_on: str = setting("all", "... on every parameter (the book) | matrices: 2-D weights and "
                                          "embeddings (GPT-2)", choices=DECAY_TARGETS)
    beta1: float = setting(0.9, "AdamW's first-moment decay", low=0.0, high=1.0, high_open=True)
    beta2: float = setting(0.999, "AdamW's second-moment decay", low=0.0, high=1.0, high_open=True)
    max_grad_norm: float = setting(1.0, "global L2 clipping; 0 turns it off ...", low=0.0)
    clip_after_warmup: bool = setting(True, "... from step warmup_steps on (the book) | false: from the first "
                                            "step (nanoGPT)")
    eval_freq: int = setting(5, "evaluate every this many steps ...", low=1)
    eval_offset: int = setting(0, "... counted from this step: 1 = after steps 1, 1 + eval_freq, ... as the book's "
                                  "global_step % eval_freq == 0", low=0)
    eval_iter: int = setting(5, "... on this many batches of each split", low=1)
    sample_prompt: str | None = setting("Every effort moves you", "greedy sample at each epoch end")
    sample_tokens: int = setting(50, "tokens of that sample; 0 = no sample", low=0)
    precision: str = setting("auto", "auto: bf16 where the hardware runs it fast (CUDA, AVX512-BF16/AMX CPUs), "
                                     "else fp32", choices=PRECISIONS)
    compile: bool = setting(False, "torch.compile the model")
    device: str = setting("auto", "auto: cuda, then mps, then cpu")
    seed: int = setting(123, "of the initial weights, dropout and the window order", low=0)
    checkpoint_every: int = setting(30, "steps between resume checkpoints (also at the end and on SIGTERM); 0 = "
                                        "only those", low=0)
    threads: int | None = setting(None, "CPU threads per process; null = the physical cores shared out", low=1)
    nproc: int = setting(1, "> 1: DDP in this many processes via torchrun (Gloo on CPU, NCCL, one per GPU)",
                         low=1)

    def __post_init__(self):
        check_fields(self, "train")
        if self.epochs is None and self.max_steps is None:
            raise ConfigError("train.epochs and train.max_steps are both null; set one of them")
        if self.windows == "random" and self.max_steps is None:
            raise ConfigError("train.windows = 'random' draws windows anywhere, with no epochs: set train.max_steps, "
                              "the steps to train")


def fine_tuning_docs(rows: str, epochs: int, eval_freq: int, drawn: str, **own: str) -> dict[str, str]:
    """A fine-tuning section's words for the keys whose defaults (the book's) or meaning are its own, where the
    fields' docs describe pretraining: its `rows` (texts, entries), the book's epochs and eval_freq, what its seed
    draws, and its `own` docs."""
    return dict(epochs=f"passes over the training {rows} (the book: {epochs}) ...",
                batch_size=f"{rows} per micro-step (the book: 8)",
                windows=f"sliding: the {rows} in epochs (random windows are language modelling's)",
                stride="unused: a row is one example", shuffle=f"shuffle the {rows} each epoch (the book)",
                peak_lr="AdamW's learning rate (the book: 5e-5) ...", initial_lr="... warmed up from here ...",
                warmup_steps="... over this many steps: none in the book",
                cosine_decay="then cosine decay: off, a constant rate (the book) ...",
                min_lr="... towards here, with cosine_decay",
                max_grad_norm="global L2 clipping; 0 turns it off (the book) ...",
                eval_freq=f"evaluate every this many steps (the book: {eval_freq}) ...",
                eval_offset="... counted from step 1, as the book's global_step % eval_freq == 0 ...",
                eval_iter="... on this many batches of each split (the book: 5)",
                seed=f"of {drawn}, dropout and the order of the {rows}", **own)
