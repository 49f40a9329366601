"""Stages finetune-classifier, finetune-instructions and tune-preferences: <splits> + a pretrained model
(<task>.init_from) -> <model> (the classifier, or the instruction model with its template, or that model tuned by
DPO), <metrics> (its last evaluation), <plots> (<task>_eval.csv, and the classifier's accuracies). A killed stage
continues from its last checkpoint (<repo>/checkpoints/<task>-<run key>/) on the next run."""

from gptcore.pipelines import classify, instruct, preference
from gptcore.pipelines.stage import run_stage, stage_arguments

FINETUNE = {"classify": classify.finetune_classifier, "instruct": instruct.finetune_instructions,
            "preference": preference.tune_preferences}
REPORTED = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "val_reward_margin")


def main() -> None:
    args, params = stage_arguments(__doc__, "splits", "model", "metrics", "plots", choices={"task": tuple(FINETUNE)})
    metrics = FINETUNE[args.task](params, splits_dir=args.splits, model_dir=args.model, metrics_file=args.metrics,
                                  plots_dir=args.plots)
    measured = ", ".join(f"{name.replace('_', ' ')} {metrics[name]:.4g}" for name in REPORTED if name in metrics)
    print(f"fine-tuned {metrics['steps']} steps ({metrics['trainable_parameters']:,} of {metrics['parameters']:,} "
          f"parameters) in {metrics['wall_seconds']:.0f} s: {measured} (last "
          f"{getattr(params, f'{args.task}_train').eval_iter} batches)")


if __name__ == "__main__":
    run_stage(main)
