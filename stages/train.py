"""Stage train: <zero-shot-plan> + <tokens> -> <models> (weights + config), <metrics> (train.json), <speed>,
<plots> (CSV + PNG).

With train.nproc > 1 the stage reruns itself under torchrun (DDP, one process per share of the
machine); rank 0 tracks and writes every output. For several machines, start
`torchrun ... stages/train.py ...` on each (see README). A killed stage continues from its last
checkpoint (<repo>/checkpoints/<run key>/, git-ignored) on the next `dvc repro`.
"""

import sys

from gptcore.pipelines import pretrain
from gptcore.pipelines.stage import run_stage, stage_arguments
from gptcore.training import distributed


def main() -> None:
    args, params = stage_arguments(__doc__, "zero-shot-plan", "tokens", "models", "metrics", "speed", "plots")
    if params.train.nproc > 1 and not distributed.launched_by_torchrun():
        sys.exit(distributed.run_with_torchrun(params.train.nproc, params.train.device, __file__, sys.argv[1:]))
    metrics = pretrain.train(params, zero_shot_plan=args.zero_shot_plan, tokens_dir=args.tokens,
                             model_dir=args.models, metrics_file=args.metrics, speed_file=args.speed,
                             plots_dir=args.plots)
    if metrics:
        print(f"trained {metrics['steps']} steps: train loss {metrics['train_loss']:.3f}, validation loss "
              f"{metrics['val_loss']:.3f}, {metrics['tokens_per_second']:.0f} tokens/s")


if __name__ == "__main__":
    run_stage(main)
