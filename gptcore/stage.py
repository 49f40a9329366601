"""What every DVC stage script shares: loading params.yaml and turning user errors into one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .corpus import CorpusError
from .params import ParamsError, load_params
from .tracking import Tracker, TrackingUnavailable
from .trainer import NonFiniteLossError, TrainingInterrupted

# TrainingInterrupted (SIGTERM / Ctrl-C) exits 1 too: the checkpoint is saved and DVC must not record
# the stage as done
USER_ERRORS = (ParamsError, CorpusError, CheckpointError, TrackingUnavailable, NonFiniteLossError,
               TrainingInterrupted, FileNotFoundError, ValueError)


def stage_params(*sections: str, path="params.yaml") -> dict:
    """The whole file is validated (a typo anywhere stops the first stage); the stage gets its sections."""
    params = load_params(Path(path))
    return {name: params[name] for name in sections}


def run_stage(main) -> None:
    """Call main(); a user error prints `error: <message>` and exits 1 instead of a traceback."""
    try:
        main()
    except USER_ERRORS as error:
        rank = int(os.environ.get("RANK", 0))  # set by torchrun
        print(f"error{f' (rank {rank})' if rank else ''}: {error}", file=sys.stderr)
        sys.exit(1)


def stage_tracker(params: dict, model_dir, section: str, stage: str):
    """The MLflow run of the model in model_dir, to which a stage adds its params section (None if off)."""
    if not params["tracking"]["enabled"]:
        return None
    return Tracker.attach(params["tracking"], model_dir, {section: params[section]}, stage)
