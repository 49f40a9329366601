"""Stages prepare-labelled and prepare-instructions: the fine-tuning data of --task (classify: the labelled
table of params `classify`; instruct: the instruction entries of `instruct`) -> <out>/{train,validation,test}
+ meta.json."""

import importlib

from gptcore.stage import run_stage, stage_arguments

# task -> (module, function, what meta.json counts); imported when chosen: the classifier's needs no torch
PREPARE = {"classify": ("gptcore.labelled", "prepare_labelled", "rows"),
           "instruct": ("gptcore.instruct", "prepare_instructions", "entries")}


def main() -> None:
    args, params = stage_arguments(__doc__, "out", choices={"task": tuple(PREPARE)})
    module, function, counted = PREPARE[args.task]
    meta = getattr(importlib.import_module(module), function)(getattr(params, args.task), args.out)
    counts = ", ".join(f"{count:,} {name}" for name, count in meta[counted].items())
    print(f"prepared {counts} {counted} -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
