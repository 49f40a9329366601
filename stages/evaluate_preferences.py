"""Stage evaluate-preferences: <model> against the model it was tuned from on the test split of <splits>, and the
responses in <responses> -> <metrics> (the DPO loss, reward accuracy and margin, ROUGE-L against chosen and
rejected), logged to the model's MLflow run."""

from gptcore.pipelines import preference
from gptcore.pipelines.stage import run_stage, stage_arguments


def main() -> None:
    args, params = stage_arguments(__doc__, "model", "splits", "responses", "metrics")
    metrics = preference.evaluate_preferences(params, splits_dir=args.splits, model_dir=args.model,
                                              responses_dir=args.responses, metrics_file=args.metrics)
    print(f"test: reward accuracy {metrics['test_reward_accuracy']:.3f}, margin {metrics['test_reward_margin']:.4g}, "
          f"loss {metrics['test_loss']:.4g}; ROUGE-L against chosen {metrics['policy_rouge_l_chosen']:.3f} (before "
          f"DPO {metrics['reference_rouge_l_chosen']:.3f}) -> {args.metrics}")


if __name__ == "__main__":
    run_stage(main)
