"""Ready experiments: named sets of params.yaml values that reproduce a known run, each value with its reason.

`gptcore recipe NAME` prints them as DVC's `-S key=value` options: `dvc exp run -n NAME $(gptcore recipe NAME)`
runs the root pipeline with them (gptcore.params.recipe_options checks them against the definitions).
"""

# build-nanogpt's train_gpt2.py: GPT-2 124M on FineWeb-Edu's 10B-token sample, 19,073 steps of 524,288 tokens
# (one epoch), which matches GPT-2 124M's HellaSwag in about an hour on 8 A100s (karpathy/build-nanogpt)
GPT2_124M = {
    "data.source": ("data/fineweb-edu/sample/10BT", "the folder of FineWeb-Edu's sample-10BT Parquet files (README: "
                                                    "how to download them)"),
    "data.sha256": (None, "a folder: each file's sum is recorded by the prepare stage"),
    "data.layout": ("shards", "each document followed by <|endoftext|>, 100M-token shards"),
    "data.train_ratio": (0.99, "every 100th document validates: ~100M tokens, build-nanogpt's one validation shard"),
    "model.preset": ("gpt2-small", "124M"),
    "model.context_length": (1024, "GPT-2's"),
    "model.drop_rate": (0.0, "no dropout in pretraining"),
    "model.qkv_bias": (True, "GPT-2's biases"),
    "model.tie_embeddings": (True, "the head shares the token embedding"),
    "model.init": ("gpt2", "N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layers)"),
    "train.epochs": (None, "counted in steps instead"),
    "train.max_steps": (19073, "10B tokens / 524,288"),
    "train.batch_size": (64, "sequences per micro-step and GPU (80 GB cards)"),
    "train.grad_accum_steps": (8, "64 x 1024 x 8 = 524,288 tokens per step on one GPU; with train.nproc=8, set 1"),
    "train.windows": ("sliding", "every window once, in a seeded order over all shards"),
    "train.peak_lr": (6e-4, "build-nanogpt's max_lr"),
    "train.initial_lr": (0.0, "linear warmup from 0 ..."),
    "train.warmup_steps": (715, "... over 375M tokens, GPT-3's warmup"),
    "train.min_lr": (6e-5, "cosine to 10 % of the peak"),
    "train.weight_decay": (0.1, "GPT-3's"),
    "train.weight_decay_on": ("matrices", "2-D weights and embeddings only"),
    "train.beta2": (0.95, "GPT-3's"),
    "train.max_grad_norm": (1.0, "clipped ..."),
    "train.clip_after_warmup": (False, "... from the first step"),
    "train.eval_freq": (250, "validation loss every 250 steps ..."),
    "train.eval_iter": (20, "... on 20 batches"),
    "train.compile": (True, "torch.compile"),
    "train.seed": (1337, "build-nanogpt's"),
    "train.checkpoint_every": (1000, "resume checkpoints, the optimizer included"),
    "zero_shot.train_tasks": (["lambada"], "measured every 250 steps; add hellaswag with its sha256 "
                                           "(zero_shot.hellaswag_sha256)"),
    "zero_shot.train_every": (250, "build-nanogpt's HellaSwag cadence"),
    "zero_shot.hellaswag_context": ("ctx", "build-nanogpt's HellaSwag prompt"),
    "zero_shot.tasks": (["lambada"], "the evaluate stage's"),
    "evaluate.batch_size": (32, "sequences per forward pass"),
    "evaluate.max_batches": (100, "3.3M tokens of each split, not all 10B"),
}

RECIPES = {"gpt2-124m": GPT2_124M}
