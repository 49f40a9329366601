"""Precision policy, the runtime record of the metrics, and the process-count check."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import native_bf16, needs_native_bf16

from gptcore.model.gpt import GPT, ModelConfig
from gptcore.model.runtime import AUTO_PRECISION_ENV, fast_bf16, physical_cores, resolve_precision, setup_runtime
from gptcore.params import read_yaml
from gptcore.settings.train import TrainConfig
from gptcore.tasks.language_modeling import LanguageModeling
from gptcore.training.distributed import check_process_count
from gptcore.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def test_auto_follows_the_hardware_unless_the_switch_forces_it(monkeypatch):
    monkeypatch.delenv(AUTO_PRECISION_ENV, raising=False)
    assert resolve_precision("auto", CPU) == ("bf16" if fast_bf16(CPU) else "fp32")
    for forced in ("fp32", "bf16"):
        monkeypatch.setenv(AUTO_PRECISION_ENV, forced)
        assert resolve_precision("auto", CPU) == forced
        assert resolve_precision("fp32", CPU) == "fp32"  # an explicit precision is never overridden
    monkeypatch.setenv(AUTO_PRECISION_ENV, "fp16")  # checked like an explicit fp16: CUDA only
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device"):
        resolve_precision("auto", CPU)
    monkeypatch.setenv(AUTO_PRECISION_ENV, "float8")
    with pytest.raises(ValueError, match=f"{AUTO_PRECISION_ENV}='float8' is not a precision"):
        resolve_precision("auto", CPU)


def test_the_runtime_record_names_what_produced_the_numbers():
    runtime = setup_runtime("cpu", "fp32", 2)
    assert torch.get_num_threads() == 2
    record = runtime.describe()
    assert record["precision"] == "fp32" and record["device"] == "cpu" and record["threads"] == 2
    assert record["processes"] == 1 and record["torch"] == torch.__version__ and record["cpu"]
    assert record["avx512_bf16"] in (True, False) and record["amx_tile"] in (True, False)
    assert (record["avx512_bf16"] or record["amx_tile"]) == fast_bf16(CPU)


def test_more_processes_than_cores_are_refused_naming_both_numbers(monkeypatch):
    monkeypatch.setattr("gptcore.training.distributed.physical_cores", lambda: 2)
    check_process_count(2, "cpu")
    with pytest.raises(ValueError, match=r"^params.yaml: train.nproc = 64 is more than the 2 CPU cores of this "
                                         r"machine; set train.nproc to at most 2$"):
        check_process_count(64, "cpu")


def test_the_train_stage_refuses_nproc_above_the_cores_before_starting_workers(tmp_path):
    params = read_yaml(REPO / "params.yaml")
    params["train"]["nproc"] = 4096
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, str(REPO / "stages" / "train.py"), "--params", "params.yaml",
                             "--zero-shot-plan", "zero_shot.json", "--tokens", "tokens", "--models", "models", "--metrics",
                             "train.json", "--speed", "speed.json", "--plots", "plots"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: params.yaml: train.nproc = 4096 is more than the {physical_cores()} CPU cores of this machine; "
        f"set train.nproc to at most {physical_cores()}"]


def train_losses(precision: str) -> list[float]:
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny", context_length=16, drop_rate=0.0))
    tokens = np.random.default_rng(0).integers(0, 1000, 16 * 24 + 1).astype(np.uint16)
    config = TrainConfig(max_steps=6, batch_size=2, peak_lr=1e-3, warmup_steps=2, eval_freq=3, eval_iter=2,
                         precision=precision, device="cpu", sample_tokens=0)
    return [s["train_loss"] for s in Trainer(model, config, LanguageModeling(tokens, tokens[:65])).fit()["steps"]]


@needs_native_bf16
def test_bf16_autocast_training_follows_fp32_within_bf16_precision():
    """bf16 keeps 8 bits of mantissa (relative rounding 2^-8 = 0.4 %); the tiny model's losses over
    6 steps stay within 1 % of fp32's, far outside fp32's own 1e-6 agreement."""
    fp32, bf16 = train_losses("fp32"), train_losses("bf16")
    assert all(math.isfinite(loss) for loss in bf16)
    np.testing.assert_allclose(bf16, fp32, rtol=1e-2)
    assert bf16 != fp32


def test_native_bf16_detection_matches_the_cpu_flags():
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if not flags:
        pytest.skip("no /proc/cpuinfo")
    assert native_bf16() == (" avx512_bf16" in flags or " amx_tile" in flags)


def test_on_the_cpu_freed_large_blocks_are_reused_without_page_faults():
    """glibc's default returns blocks over 32 MB to the kernel on free, so each new one faults in again
    (64 MB = 16,384 pages of 4 kB, measured every time); after setup_runtime on the CPU the heap keeps
    them (measured: every other block reused with no fault)."""
    import platform
    import resource

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("the setting is glibc's")
    setup_runtime("cpu", "fp32", 1)

    def faults_of_a_fresh_block() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(16 * 2 ** 20)  # 64 MB, written once, freed at once
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    assert min(faults_of_a_fresh_block() for _ in range(6)) < 1000
