"""Multi-process training with torch.distributed (DDP): NCCL on CUDA, Gloo on CPU, launched by torchrun.

torchrun starts one process per GPU (or per share of the CPU cores) and tells each its place through
RANK, LOCAL_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE. Rank 0 is the main process: it alone prints, logs
to MLflow and writes checkpoints and outputs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..machine import physical_cores


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Ranks:
    """This process's place in the process group (a single process when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return Ranks()
    return Ranks(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size(),
                       int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size())))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", 1)) > 1


def init_distributed(device: str = "auto") -> Ranks:
    """Join the process group torchrun set up (a no-op in a single process)."""
    if not launched_by_torchrun() or dist.is_initialized():
        return current()
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str = "auto"):
    """Join torchrun's process group for the block (nothing to join in a single process), then leave it."""
    init_distributed(device)
    try:
        yield current()
    finally:
        shutdown()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all processes (identity in a single process)."""
    if not current().enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_gather(obj) -> list:
    """Every process's obj, in rank order."""
    if not current().enabled:
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def check_process_count(nproc: int, device: str = "auto") -> None:
    """One process per GPU, or per CPU core: more would oversubscribe the machine, so they are refused."""
    on_gpus = torch.cuda.is_available() and device in ("auto", "cuda")
    available, unit = (torch.cuda.device_count(), "GPUs") if on_gpus else (physical_cores(), "CPU cores")
    if nproc > available:
        raise ConfigError(f"params.yaml: train.nproc = {nproc} is more than the {available} {unit} of this "
                         f"machine; set train.nproc to at most {available}")


def run_with_torchrun(nproc: int, device: str, script: str, args: list[str]) -> int:
    """Run script with nproc processes on this machine (refused beyond its cores or GPUs); the exit
    status of torchrun.

    SIGTERM is passed on and Ctrl-C (which the terminal sends to the workers too) waits for them, so
    the workers save their checkpoint before this process returns.
    """
    check_process_count(nproc, device)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               script, *args]
    # torchrun would set 1 thread per worker (and say so); share the cores out as the Trainer does
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, physical_cores() // nproc))
    child = subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": threads})
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, lambda signum, _frame: child.send_signal(signum)),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        return child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
