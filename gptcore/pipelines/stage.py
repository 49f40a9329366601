"""What every DVC stage script shares: its path arguments, the validated params, one-line user errors."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import GptcoreError
from ..params import Params, load_params


def stage_arguments(description: str, *paths: str, choices: dict[str, tuple[str, ...]] | None = None
                    ) -> tuple[argparse.Namespace, Params]:
    """--params, the stage's path arguments and its choices (e.g. --task of a script two pipelines share),
    all required: dvc.yaml's cmd shows them; and the whole params file validated (a typo anywhere stops
    the first stage)."""
    parser = argparse.ArgumentParser(description=description)
    for name in ("params", *paths):
        parser.add_argument(f"--{name}", type=Path, required=True)
    for name, options in (choices or {}).items():
        parser.add_argument(f"--{name}", choices=options, required=True)
    args = parser.parse_args()
    return args, load_params(args.params)


def run_stage(main) -> None:
    """Call main(); a GptcoreError prints `error: <message>` and exits 1, anything else is a bug and keeps
    its traceback. (TrainingInterrupted exits 1 too: DVC must not record the stage as done.)"""
    try:
        main()
    except GptcoreError as error:
        rank = int(os.environ.get("RANK", 0))  # set by torchrun
        print(f"error{f' (rank {rank})' if rank else ''}: {error}", file=sys.stderr)
        sys.exit(1)
