"""Stage evaluate-instructions: <model> + <splits> + <responses> -> <metrics> (instruct.json: the test split's
loss and perplexity on its response tokens, ROUGE-L, the judge's score when judge.enabled), <scores> (per
entry)."""

from gptcore.pipelines import instruct
from gptcore.pipelines.stage import run_stage, stage_arguments


def main() -> None:
    args, params = stage_arguments(__doc__, "model", "splits", "responses", "metrics", "scores")
    metrics = instruct.evaluate_instructions(params, splits_dir=args.splits, model_dir=args.model,
                                             responses_dir=args.responses, metrics_file=args.metrics,
                                             scores_file=args.scores)
    judged = f", judge score {metrics['judge_score']:.2f}" if "judge_score" in metrics else ""
    print(f"test loss {metrics['test_loss']:.3f} (perplexity {metrics['test_perplexity']:.2f}) on the responses' "
          f"tokens, ROUGE-L {metrics['rouge_l']:.3f}{judged}")


if __name__ == "__main__":
    run_stage(main)
