"""Stage generate-preference-responses: the models before DPO (preference.init_from) and after (<model>) + the test
split of <splits> -> <out>/responses.json (the entries with reference_response and policy_response), responses.md
(side by side), generation.json."""

from gptcore.pipelines import preference
from gptcore.pipelines.stage import run_stage, stage_arguments


def main() -> None:
    args, params = stage_arguments(__doc__, "model", "splits", "out")
    stats = preference.generate_preference_responses(params, splits_dir=args.splits, model_dir=args.model,
                                                     out_dir=args.out)
    print(f"{stats['responses']} responses from each model, {stats['reference_generated_tokens']:,} and "
          f"{stats['policy_generated_tokens']:,} tokens in {stats['seconds']:.1f} s -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
