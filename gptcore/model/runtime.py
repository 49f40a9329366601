"""Where and how tensors run: device choice, CPU threads, mixed precision, set up once by setup_runtime."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..machine import cpu_model, physical_cores
from ..settings import PRECISIONS

# Forces what `precision: auto` resolves to, for a whole run of the tests or of the pipeline: CI reproduces
# the committed metrics at the precision that made them, and the suite runs "as an AVX2 machine would"
# (fp32) or "as an AMX machine would" (bf16) on either kind.
AUTO_PRECISION_ENV = "GPTCORE_AUTO_PRECISION"


def pick_device(name: str = "auto") -> torch.device:
    """'auto' takes cuda, then mps, then cpu; an explicit name must be available."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} requested but MPS is not available; use 'auto' or 'cpu'")
    return device


def keep_freed_memory() -> bool:
    """Have glibc serve every allocation from its heap and keep what is freed there (mallopt M_MMAP_MAX 0,
    M_TRIM_THRESHOLD 2 GiB). Its default maps each block over 32 MB fresh from the kernel and unmaps it on
    free, so every training step page-faults its activations and gradients in again; measured on a 2-core
    AMD EPYC Zen 4, GPT-2 124M at 2 x 256 trains 5-14 % faster in fp32 and 9-16 % in bf16 with this (the
    same as preloading tcmalloc; jemalloc gained nothing; docs/benchmarks.md). The process keeps its
    high-water memory until it exits. Returns whether it applied (glibc only)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))


def set_cpu_threads(threads: int | None = None) -> int:
    """One intra-op thread per physical core unless told otherwise; returns the count set."""
    threads = threads or physical_cores()
    torch.set_num_threads(threads)
    return threads


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run in hardware. On CPUs without AVX512-BF16 or AMX they are emulated and
    measured ~100x slower than fp32 (AMD EPYC, AVX2 only), so 'auto' must not pick bf16 there."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Validate precision for the device; 'auto' becomes bf16 where the hardware runs it, else fp32."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision 'fp16' needs a CUDA device (a gradient scaler guards its range); "
                         f"on {device.type} use 'bf16' or 'fp32'")
    if precision == "auto":
        forced = os.environ.get(AUTO_PRECISION_ENV)
        if not forced:
            return "bf16" if fast_bf16(device) else "fp32"
        if forced not in PRECISIONS[1:]:
            raise ConfigError(f"{AUTO_PRECISION_ENV}={forced!r} is not a precision; set it to one of "
                             f"{', '.join(PRECISIONS[1:])} or unset it")
        return resolve_precision(forced, device)
    return precision


@dataclass(frozen=True)
class Runtime:
    """Where a piece of work runs and at which precision, with the threads it was given."""
    device: torch.device
    precision: str  # resolved: fp32, bf16 or fp16
    threads: int
    processes: int = 1

    def autocast(self):
        """Context manager for forward passes: bf16/fp16 autocast, or nothing for fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def describe(self) -> dict:
        """What produced a run's numbers: enough to tell whether another machine can reproduce them."""
        description = {"precision": self.precision, "device": self.device.type, "torch": torch.__version__,
                       "gptcore": gptcore_version(), "threads": self.threads, "processes": self.processes}
        if self.device.type == "cuda":
            description["gpu"] = torch.cuda.get_device_name(self.device)
        description["cpu"] = cpu_model()
        description["avx512_bf16"] = torch.cpu._is_avx512_bf16_supported()
        description["amx_tile"] = torch.cpu._is_amx_tile_supported()
        return description


def gptcore_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gptcore")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def setup_runtime(device: str = "auto", precision: str = "auto", threads: int | None = None, *,
                  local_rank: int | None = None, processes_here: int = 1, processes: int = 1) -> Runtime:
    """Pick the device (a DDP process's own GPU: local_rank), set the CPU threads (the physical cores
    shared out between the processes_here on this machine, unless given) and resolve the precision.
    On CUDA, fp32 matmuls and convolutions may use TF32 tensor cores, as nanoGPT sets it (10-bit
    mantissa products, fp32 accumulation); bf16 and fp16 autocast are unaffected. On the CPU, freed memory
    stays with the process (keep_freed_memory)."""
    chosen = pick_device(device)
    if chosen.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        if local_rank is not None:
            chosen = torch.device("cuda", local_rank)
    if chosen.type == "cpu":
        keep_freed_memory()
        threads = set_cpu_threads(threads or max(1, physical_cores() // processes_here))
    else:
        threads = torch.get_num_threads()
    return Runtime(chosen, resolve_precision(precision, chosen), threads, processes)

