"""DDP through the train stage: 2 Gloo processes under torchrun against 1 process with twice the batch."""

import csv
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from gptcore.data.corpus import prepare_corpus, resolve_sources
from gptcore.data.token_files import tokenize_splits
from gptcore.params import read_yaml
from gptcore.settings.data import VERDICT_SHA256, VERDICT_URL

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, shared_dir):
    root = tmp_path_factory.mktemp("tokens")
    prepare_corpus(resolve_sources(VERDICT_URL, VERDICT_SHA256), root / "prepared")
    tokenize_splits(root / "prepared", root / "tokens")
    return root / "tokens"


def train_stage(run_dir: Path, tokens: Path, nproc: int, batch_size: int, grad_accum_steps: int = 1,
                env: dict | None = None, nodes: int = 1):
    """Run stages/train.py as DVC would (tiny model, no dropout so the processes' RNGs do not matter; fp32
    whatever the CPU: the comparisons below need 1e-5, which bf16's 2^-8 rounding cannot give); with nodes > 1,
    as on that many machines: torchrun started once per "node", meeting through a c10d rendezvous on 127.0.0.1."""
    params = read_yaml(REPO / "params.yaml")
    params["model"].update(preset="tiny", context_length=32, drop_rate=0.0)
    params["train"].update(epochs=None, max_steps=8, batch_size=batch_size, nproc=nproc, eval_freq=4, precision="fp32",
                           grad_accum_steps=grad_accum_steps,
                           eval_iter=2, checkpoint_every=3, warmup_steps=2, sample_tokens=3)
    params["tracking"]["enabled"] = False
    run_dir.mkdir(exist_ok=True)
    (run_dir / "params.yaml").write_text(yaml.safe_dump(params))
    (run_dir / "zero_shot.json").write_text("{}")  # the plan-zero-shot stage's: no measurement during training
    env = {**(env or os.environ), "DVC_ROOT": str(run_dir)}  # resume checkpoints go to <DVC_ROOT>/checkpoints
    stage = [str(REPO / "stages" / "train.py"), "--params", "params.yaml", "--zero-shot-plan", "zero_shot.json",
             "--tokens", str(tokens), "--models", "models", "--metrics", "train.json", "--speed", "speed.json",
             "--plots", "plots"]
    if nodes == 1:
        return subprocess.run([sys.executable, *stage], cwd=run_dir, env=env, capture_output=True, text=True,
                              timeout=600)
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nodes}", "--nproc-per-node=1",
                "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=test-{port}"]
    machines = [subprocess.Popen(torchrun + stage, cwd=run_dir, env={**env, "OMP_NUM_THREADS": "1"},
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(nodes)]
    outputs = [machine.communicate(timeout=600) for machine in machines]
    return subprocess.CompletedProcess(torchrun, max(m.returncode for m in machines),
                                       "".join(out for out, _ in outputs), "".join(err for _, err in outputs))


def column(path: Path, name: str) -> list[float]:
    with open(path) as handle:
        return [float(row[name]) for row in csv.DictReader(handle)]


def test_two_processes_match_one_with_twice_the_batch_and_resume_exactly(tmp_path, tokens, fault_env):
    single = train_stage(tmp_path / "single", tokens, nproc=1, batch_size=4)
    assert single.returncode == 0, single.stderr
    ddp = train_stage(tmp_path / "ddp", tokens, nproc=2, batch_size=2)
    assert ddp.returncode == 0, ddp.stderr
    assert ddp.stdout.count("trained 8 steps") == 1  # rank 0 alone reports

    for curves in ("train", "eval"):
        for name in ("train_loss", "val_loss") if curves == "eval" else ("loss", "grad_norm"):
            expected = column(tmp_path / "single" / "plots" / f"{curves}.csv", name)
            assert column(tmp_path / "ddp" / "plots" / f"{curves}.csv", name) == pytest.approx(expected, abs=1e-5)
    tokens_seen = column(tmp_path / "ddp" / "plots" / "train.csv", "tokens_seen")
    assert tokens_seen[-1] == 8 * 2 * 2 * 32  # global: steps x processes x batch x context

    # 2 processes x 2 accumulated micro-batches of 1 (gradients exchanged once per step, no_sync before)
    accumulated = train_stage(tmp_path / "accumulated", tokens, nproc=2, batch_size=1, grad_accum_steps=2)
    assert accumulated.returncode == 0, accumulated.stderr
    for name in ("loss", "grad_norm"):
        assert column(tmp_path / "accumulated" / "plots" / "train.csv", name) == pytest.approx(
            column(tmp_path / "single" / "plots" / "train.csv", name), abs=1e-5)

    # SIGTERM to the stage (as DVC or a scheduler would send it) during step 5, raised from rank 1: the
    # stage passes it to torchrun, torchrun to both workers; they stop at the same step, rank 0 saves
    interrupted = train_stage(tmp_path / "resumed", tokens, nproc=2, batch_size=2,
                              env=fault_env(GPTCORE_INTERRUPT_AT="step:5:1"))
    assert interrupted.returncode != 0 and not (tmp_path / "resumed" / "models").exists()
    assert "error: stopped by SIGTERM at step" in interrupted.stderr
    resumed = train_stage(tmp_path / "resumed", tokens, nproc=2, batch_size=2)
    assert resumed.returncode == 0, resumed.stderr
    (step,) = re.findall(r"resuming from step (\d+)", resumed.stdout)
    assert 5 <= int(step) < 8
    straight = load_file(tmp_path / "ddp" / "models" / "model.safetensors")
    again = load_file(tmp_path / "resumed" / "models" / "model.safetensors")
    assert all(torch.equal(straight[name], again[name]) for name in straight)


def test_two_machines_meeting_through_c10d_train_as_one_process(tmp_path, tokens):
    """torchrun --nnodes 2 --nproc-per-node 1, each "machine" started on its own as under SLURM's srun: the same
    curves as one process with the same global batch, and the same weights within float rounding."""
    single = train_stage(tmp_path / "single", tokens, nproc=1, batch_size=4)
    assert single.returncode == 0, single.stderr
    nodes = train_stage(tmp_path / "nodes", tokens, nproc=1, batch_size=2, nodes=2)
    assert nodes.returncode == 0, nodes.stderr
    assert nodes.stdout.count("trained 8 steps") == 1  # the global rank 0 alone reports and writes
    for name in ("loss", "grad_norm"):
        assert column(tmp_path / "nodes" / "plots" / "train.csv", name) == pytest.approx(
            column(tmp_path / "single" / "plots" / "train.csv", name), abs=1e-5)
    one = load_file(tmp_path / "single" / "models" / "model.safetensors")
    two = load_file(tmp_path / "nodes" / "models" / "model.safetensors")
    assert all(torch.allclose(one[name], two[name], atol=1e-5) for name in one)
