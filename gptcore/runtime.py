"""Where and how tensors run: device choice, CPU threads, mixed precision."""

from __future__ import annotations

import contextlib
import os

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
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
        raise ValueError(f"device {name!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available; use 'auto' or 'cpu'")
    return device


def physical_cores() -> int:
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except ImportError:
        cores = None
    return max(1, cores or os.cpu_count() or 1)


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
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"precision 'fp16' needs a CUDA device (a gradient scaler guards its range); "
                         f"on {device.type} use 'bf16' or 'fp32'")
    if precision == "auto":
        forced = os.environ.get(AUTO_PRECISION_ENV)
        if not forced:
            return "bf16" if fast_bf16(device) else "fp32"
        if forced not in PRECISIONS[1:]:
            raise ValueError(f"{AUTO_PRECISION_ENV}={forced!r} is not a precision; set it to one of "
                             f"{', '.join(PRECISIONS[1:])} or unset it")
        return resolve_precision(forced, device)
    return precision


def cpu_model() -> str:
    """The CPU's model name as lscpu prints it (platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def describe_runtime(device: torch.device, precision: str, threads: int, processes: int = 1) -> dict:
    """What produced a run's numbers: enough to tell whether another machine can reproduce them."""
    description = {"precision": precision, "device": device.type, "torch": torch.__version__,
                   "threads": threads, "processes": processes}
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    description["cpu"] = cpu_model()
    description["avx512_bf16"] = torch.cpu._is_avx512_bf16_supported()
    description["amx_tile"] = torch.cpu._is_amx_tile_supported()
    return description


def autocast(precision: str, device: torch.device):
    """Context manager for the forward pass: bf16/fp16 autocast, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


INFERENCE_WEIGHTS = ("fp32", "bf16")


def cast_for_inference(model, weights: str):
    """Weights (and so the KV cache) in fp32 or bf16. Token-by-token decoding is bound by memory
    bandwidth, so halving the bytes read per token speeds it up even where bf16 math is emulated."""
    if weights not in INFERENCE_WEIGHTS:
        raise ValueError(f"inference weights must be one of {INFERENCE_WEIGHTS}, got {weights!r}")
    return model.to(torch.bfloat16 if weights == "bf16" else torch.float32)
