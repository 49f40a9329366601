"""Test-only fault injection: Python imports this at start-up when its folder is on PYTHONPATH.

GPTCORE_KILL_AT=<point>:<n>[:<rank>] SIGKILLs the train stage process (rank 0 unless given) the n-th
time it reaches <point>; nothing else runs, as when the machine loses power.
GPTCORE_INTERRUPT_AT (same form) sends SIGTERM instead to the stage process DVC started (under torchrun
the worker's grandparent), as `kill` or a scheduler's preemption would. The points:
  step        mid-step: gradients computed, the optimizer not yet stepped
  evaluate    inside an evaluation, after the train-split pass (so n = 2 is the first evaluation)
  checkpoint  inside a checkpoint write: the weights file written, the state and manifest not
Processes other than the train stage (dvc itself, torchrun's agent) are left alone.
"""

import os
import sys


def stage_pid() -> int:
    """This process, or under torchrun the process that launched torchrun."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return os.getpid()
    with open(f"/proc/{os.getppid()}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def install(point: str, n: int, rank: int, action) -> None:
    """Wrap the function that marks <point> so that its n-th call (in process `rank`) runs action."""
    import torch

    import gptcore.tasks.language_modeling
    import gptcore.training.checkpoint

    if int(os.environ.get("RANK", 0)) != rank:
        return
    calls = {"count": 0}

    def faulting(original, should_count=lambda *args, **kwargs: True):
        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            if should_count(*args, **kwargs):
                calls["count"] += 1
                if calls["count"] == n:
                    action()
            return result
        return wrapper

    if point == "step":
        torch.nn.utils.clip_grad_norm_ = faulting(torch.nn.utils.clip_grad_norm_)
    elif point == "evaluate":
        gptcore.tasks.language_modeling.evaluate_loss = faulting(gptcore.tasks.language_modeling.evaluate_loss)
    elif point == "checkpoint":
        gptcore.training.checkpoint.save_safetensors = faulting(
            gptcore.training.checkpoint.save_safetensors, lambda model, filename, *a, **k: ".tmp-" in str(filename))
    else:
        raise ValueError(f"GPTCORE_KILL_AT: unknown point {point!r}")


def main() -> None:
    import signal

    if not (sys.argv and sys.argv[0].endswith(os.path.join("stages", "train.py"))):
        return
    for variable, action in (("GPTCORE_KILL_AT", lambda: os.kill(os.getpid(), signal.SIGKILL)),
                             ("GPTCORE_INTERRUPT_AT", lambda: os.kill(stage_pid(), signal.SIGTERM))):
        if os.environ.get(variable):
            point, count, *rank = os.environ[variable].split(":")
            install(point, int(count), int(rank[0]) if rank else 0, action)


main()
