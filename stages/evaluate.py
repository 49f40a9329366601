"""Stage evaluate: <zero-shot-plan> + <models> + <tokens> -> <metrics> (eval.json: loss and perplexity of each
split, the zero-shot tasks' metrics), <speed>."""

from gptcore.pipelines import pretrain
from gptcore.pipelines.stage import run_stage, stage_arguments
from gptcore.evaluation.zero_shot import format_results


def main() -> None:
    args, params = stage_arguments(__doc__, "zero-shot-plan", "models", "tokens", "metrics", "speed")
    metrics, zero_shot = pretrain.evaluate(params, zero_shot_plan=args.zero_shot_plan, model_dir=args.models,
                                           tokens_dir=args.tokens, metrics_file=args.metrics, speed_file=args.speed)
    if zero_shot:
        print(format_results(zero_shot))
    print(f"train loss {metrics['train_loss']:.3f} (perplexity {metrics['train_perplexity']:.1f}), validation "
          f"loss {metrics['val_loss']:.3f} (perplexity {metrics['val_perplexity']:.1f})")


if __name__ == "__main__":
    run_stage(main)
