"""Reproduce-and-compare for CI: the committed training record says what made the metrics (metrics/train.json
"runtime"; the evaluate stage runs at the same `auto` precision and its eval.json holds numbers only).

`python .ci/compare_metrics.py precision` prints the precision CI reproduces with (exported as
GPTCORE_AUTO_PRECISION before `dvc repro`): the committed one, or fp32 where the committed one is bf16
and this machine would emulate it (hours), which it says in one line on stderr.
`python .ci/compare_metrics.py` compares the fresh metrics with the committed ones: counts exactly,
loss-like values within RELATIVE_TOLERANCE of their precision when both runs used the same precision
(other values are printed, not compared: machine speed and load).

How the tolerances were derived (docs/design.md, "Reproducing the committed metrics"): the default
pipeline ran twice on one machine (AMD EPYC Zen 4, 2 threads, torch 2.13.0), in fp32 with its native
AVX512 kernels and again with PyTorch's and oneDNN's kernels held to AVX2 (ATEN_CPU_CAPABILITY=avx2,
ONEDNN_MAX_CPU_ISA=AVX2), the code paths of the AVX2-only machine kind, and a third time with MKL's
matmuls on another code path as well (MKL_CBWR=COMPATIBLE: different summation order). The largest
relative difference of any compared value was 9.5e-7 in both (validation perplexity; the losses
2.2e-7 and less): the fp32 tolerance is 10x that, 1e-5. The bf16 tolerance, 1e-2, is 3x the largest relative difference
between that machine's bf16 and fp32 runs of the default pipeline (3.2e-3, train perplexity; the
losses 1.5e-3 and less): a bound on how far two bf16 kernels (AMX, AVX512-BF16) drift apart, which
no pair of bf16 machines here could measure directly.
"""

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FILES = ("metrics/train.json", "metrics/eval.json")
RECORD = FILES[0]  # the one that holds the runtime
SPEEDS = ("metrics/train_speed.json", "metrics/eval_speed.json")  # DVC outputs, not committed: printed only
EXACT = ("steps", "tokens_seen", "parameters")
LOSSES = ("train_loss", "val_loss", "train_perplexity", "val_perplexity")
RELATIVE_TOLERANCE = {"fp32": 1e-5, "bf16": 1e-2}


def committed(path: str) -> dict:
    shown = subprocess.run(["git", "show", f"HEAD:{path}"], capture_output=True, text=True, check=True)
    return json.loads(shown.stdout)


def committed_precision() -> str:
    return committed(RECORD)["runtime"]["precision"]


def reproduction_precision() -> str:
    import torch

    from gptcore.machine import cpu_model
    from gptcore.model.runtime import fast_bf16

    precision = committed_precision()
    if precision == "bf16" and not fast_bf16(torch.device("cpu")):
        made_on = committed(RECORD)["runtime"]["cpu"]
        print(f"the committed metrics were made in bf16 on {made_on}; this machine ({cpu_model()}) emulates bf16, "
              f"so CI reproduces in fp32 and compares only {', '.join(EXACT)}", file=sys.stderr)
        return "fp32"
    return precision


def compare() -> int:
    failures = 0
    old_runtime, new_runtime = committed(RECORD)["runtime"], json.loads(Path(RECORD).read_text())["runtime"]
    same_precision = old_runtime["precision"] == new_runtime["precision"]
    print(f"runtime: committed {old_runtime}\n         reproduced {new_runtime}")
    for path in FILES:
        old, new = committed(path), json.loads(Path(path).read_text())
        for key, value in old.items():
            if key == "runtime":
                continue
            fresh = new[key]
            if key in EXACT:
                ok, rule = fresh == value, "exact"
            elif key in LOSSES and same_precision:
                tolerance = RELATIVE_TOLERANCE[old_runtime["precision"]]
                ok, rule = abs(fresh - value) <= tolerance * abs(value), f"within {tolerance:.0e} relative"
            else:
                print(f"     {path} {key}: committed {value:.6g}, reproduced {fresh:.6g} (not compared)")
                continue
            failures += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {path} {key}: committed {value:.6g}, reproduced {fresh:.6g} "
                  f"({rule}, {abs(fresh - value) / abs(value or 1):.2e} apart)")
    for path in SPEEDS:
        if Path(path).is_file():
            print(f"     {path}: {json.loads(Path(path).read_text())} (machine speed and load: not compared)")
    return 1 if failures else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["precision"]:
        print(reproduction_precision())
        sys.exit(0)
    sys.exit(compare())
