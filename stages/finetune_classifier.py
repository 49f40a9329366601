"""Stage finetune-classifier: <splits> + a pretrained model (classify.init_from) -> <model> (the classifier),
<metrics> (its last evaluation), <plots> (classify_eval.csv, classify_accuracy.csv). A killed stage continues
from its last checkpoint (<repo>/checkpoints/classify-<run key>/) on the next run."""

from gptcore import finetune
from gptcore.stage import run_stage, stage_arguments


def main() -> None:
    args, params = stage_arguments(__doc__, "splits", "model", "metrics", "plots")
    metrics = finetune.finetune_classifier(params, splits_dir=args.splits, model_dir=args.model,
                                           metrics_file=args.metrics, plots_dir=args.plots)
    print(f"fine-tuned {metrics['steps']} steps ({metrics['trainable_parameters']:,} of {metrics['parameters']:,} "
          f"parameters) in {metrics['wall_seconds']:.0f} s: train accuracy {metrics.get('train_accuracy', 0):.2%}, "
          f"validation accuracy {metrics.get('val_accuracy', 0):.2%} (last {params.classify_train.eval_iter} batches)")


if __name__ == "__main__":
    run_stage(main)
