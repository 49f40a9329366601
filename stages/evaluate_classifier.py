"""Stage evaluate-classifier: <model> + <splits> -> <metrics> (classify.json: loss and accuracy of every split,
test F1 per class), <report> (the test split's confusion_matrix.csv and per_class.csv)."""

from gptcore.pipelines import classify
from gptcore.pipelines.stage import run_stage, stage_arguments


def main() -> None:
    args, params = stage_arguments(__doc__, "model", "splits", "metrics", "report")
    metrics = classify.evaluate_classifier(params, splits_dir=args.splits, model_dir=args.model,
                                           metrics_file=args.metrics, report_dir=args.report)
    print(f"accuracy: train {metrics['train_accuracy']:.2%}, validation {metrics['val_accuracy']:.2%}, test "
          f"{metrics['test_accuracy']:.2%}")


if __name__ == "__main__":
    run_stage(main)
