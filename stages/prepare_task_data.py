"""Stages prepare-labelled and prepare-instructions: the fine-tuning data of --task (classify: the labelled
table of params `classify`; instruct: the instruction entries of `instruct`) -> <out>/{train,validation,test}
+ meta.json."""

from gptcore.data.instructions import prepare_instructions
from gptcore.data.labelled import prepare_labelled
from gptcore.pipelines.stage import run_stage, stage_arguments

# task -> (what prepares its data, what meta.json counts)
PREPARE = {"classify": (prepare_labelled, "rows"), "instruct": (prepare_instructions, "entries")}


def main() -> None:
    args, params = stage_arguments(__doc__, "out", choices={"task": tuple(PREPARE)})
    prepare, counted = PREPARE[args.task]
    meta = prepare(getattr(params, args.task), args.out)
    counts = ", ".join(f"{count:,} {name}" for name, count in meta[counted].items())
    print(f"prepared {counts} {counted} -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
