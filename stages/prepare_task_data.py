"""Stages prepare-labelled, prepare-instructions and prepare-preferences: the fine-tuning data of --task (classify:
the labelled table of params `classify`; instruct: the instruction entries of `instruct`; preference: the
preference entries of `preference`) -> <out>/{train,validation,test} + meta.json."""

from functools import partial

from gptcore.data.instructions import PREFERENCE_FIELDS, prepare_instructions
from gptcore.data.labelled import prepare_labelled
from gptcore.pipelines.stage import run_stage, stage_arguments

# task -> (what prepares its data, what meta.json counts)
PREPARE = {"classify": (prepare_labelled, "rows"), "instruct": (prepare_instructions, "entries"),
           "preference": (partial(prepare_instructions, section="preference", fields=PREFERENCE_FIELDS), "entries")}


def main() -> None:
    args, params = stage_arguments(__doc__, "out", choices={"task": tuple(PREPARE)})
    prepare, counted = PREPARE[args.task]
    meta = prepare(getattr(params, args.task), args.out)
    counts = ", ".join(f"{count:,} {name}" for name, count in meta[counted].items())
    print(f"prepared {counts} {counted} -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
