"""Stage generate-responses: <model> + the test split of <splits> -> <out>/responses.json (the entries with
model_response), responses.md, generation.json."""

from gptcore.pipelines import instruct
from gptcore.pipelines.stage import run_stage, stage_arguments


def main() -> None:
    args, params = stage_arguments(__doc__, "model", "splits", "out")
    stats = instruct.generate_instruction_responses(params, splits_dir=args.splits, model_dir=args.model,
                                                    out_dir=args.out)
    print(f"{stats['responses']} responses, {stats['generated_tokens']:,} tokens in {stats['seconds']:.1f} s "
          f"({stats['tokens_per_second']:.1f} tokens/s) -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
