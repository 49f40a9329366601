"""Faults and hostile files: corrupted checkpoints, failed writes, planted pickles, a dead tracking server."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gptcore.atomic import atomic_write_text
from gptcore.formats.huggingface import export_hf
from gptcore.formats.model_folder import CheckpointError, save_model
from gptcore.model.gpt import GPT, ModelConfig
from gptcore.params import read_yaml
from gptcore.settings.tracking import TrackingConfig
from gptcore.settings.train import TrainConfig
from gptcore.tasks.language_modeling import LanguageModeling
from gptcore.tracking.runs import Tracker, TrackingUnavailable
from gptcore.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from gptcore.training.trainer import Trainer


def tiny():
    torch.manual_seed(0)
    return GPT(ModelConfig.from_preset("tiny", context_length=16))


@pytest.fixture
def checkpoint(tmp_path):
    trainer = Trainer(tiny(), TrainConfig(max_steps=2, warmup_steps=0, precision="fp32", device="cpu",
                                          sample_tokens=0, eval_freq=2, eval_iter=1),
                      LanguageModeling(np.arange(200, dtype=np.uint16), np.arange(40, dtype=np.uint16)),
                      checkpoint_dir=tmp_path)
    trainer.fit()
    return latest_checkpoint(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_checkpoint_is_reported_with_its_path(checkpoint, damage):
    target = checkpoint / "model.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:1000])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    with pytest.raises(CheckpointError, match=str(target)):
        load_checkpoint(checkpoint, tiny())


def test_resume_refuses_a_damaged_checkpoint_instead_of_starting_over(checkpoint, tmp_path):
    (checkpoint / "trainer_state.pt").write_bytes(b"garbage")
    trainer = Trainer(tiny(), TrainConfig(max_steps=4, warmup_steps=0, precision="fp32", device="cpu",
                                          sample_tokens=0),
                      LanguageModeling(np.arange(200, dtype=np.uint16), np.arange(40, dtype=np.uint16)),
                      checkpoint_dir=tmp_path)
    with pytest.raises(CheckpointError, match="trainer_state.pt"):
        trainer.resume()


def test_planted_pickle_is_refused_even_with_valid_checksums(checkpoint):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch /tmp/gptcore-pwned",))

    state_path = checkpoint / "trainer_state.pt"
    torch.save({"step": 2, "payload": Exploit()}, state_path)  # a pickle that runs code when loaded

    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["sha256"]["trainer_state.pt"] = hashlib.sha256(state_path.read_bytes()).hexdigest()
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(checkpoint, tiny())
    assert not os.path.exists("/tmp/gptcore-pwned")


def test_failed_write_leaves_the_previous_checkpoint_intact(checkpoint, monkeypatch):
    before = {p.name: p.read_bytes() for p in checkpoint.iterdir()}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(checkpoint.parent, tiny(), {"step": 3})
    assert latest_checkpoint(checkpoint.parent) == checkpoint
    assert {p.name: p.read_bytes() for p in checkpoint.iterdir()} == before
    assert [p.name for p in checkpoint.parent.iterdir() if p.name.startswith(".")] == []
    load_checkpoint(checkpoint, tiny())  # still loads


def test_unreachable_tracking_server_fails_fast_or_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(TrackingUnavailable, match="127.0.0.1:9.*on_unreachable"):
        Tracker.start(TrackingConfig(experiment="x"), "run", {}, {})
    assert time.perf_counter() - started < 30
    tracker = Tracker.start(TrackingConfig(experiment="x", on_unreachable="local"), "run", {}, {"a": {"b": 1}})
    assert tracker.client.get_run(tracker.run_id).data.params == {"a.b": "1"}
    assert (tmp_path / "mlruns" / "mlflow.db").is_file()


def test_generate_stage_refuses_a_prompt_longer_than_the_context_before_generating(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    save_model(tiny(), tmp_path / "models")  # context 16
    params = read_yaml(repo / "params.yaml")
    params["generate"]["prompts"] = ["Every effort moves you", "word " * 20]
    params["tracking"]["enabled"] = False
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, str(repo / "stages" / "generate_samples.py"), "--params", "params.yaml",
                             "--models", "models", "--out", "samples"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: params.yaml: generate.prompts[1] is 21 tokens, longer than the model's "
                                     "context of 16 tokens; shorten it")
    assert not (tmp_path / "samples").exists() and result.stdout == ""


def test_failed_output_write_leaves_the_previous_output_intact(tmp_path, monkeypatch):
    """Metrics, plots and model files are written through gptcore.atomic: disk full mid-write keeps the old file."""
    metrics = tmp_path / "metrics" / "train.json"
    atomic_write_text(metrics, '{"val_loss": 6.38}\n')
    save_model(tiny(), tmp_path / "models")
    weights = (tmp_path / "models" / "model.safetensors").read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the data is written, flushing it to disk fails
    with pytest.raises(OSError, match="No space"):
        atomic_write_text(metrics, '{"val_loss": 1.0}\n')
    with pytest.raises(OSError, match="No space"):
        save_model(GPT(ModelConfig.from_preset("tiny", context_length=16)), tmp_path / "models")
    assert metrics.read_text() == '{"val_loss": 6.38}\n'
    assert (tmp_path / "models" / "model.safetensors").read_bytes() == weights
    assert not [p for p in tmp_path.rglob(".*tmp*")]  # no half-written temporary files left behind


def test_outputs_get_the_usual_file_permissions(tmp_path):
    """safetensors creates its files 0600; written outputs follow the umask like any other file."""
    old_umask = os.umask(0o022)
    try:
        save_model(tiny(), tmp_path / "models")
        export_hf(tiny(), tmp_path / "hf")
    finally:
        os.umask(old_umask)
    for path in (tmp_path / "models" / "model.safetensors", tmp_path / "hf" / "model.safetensors",
                 tmp_path / "hf" / "config.json"):
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_latest_pointer_to_a_missing_checkpoint_is_an_error_not_a_fresh_start(checkpoint):
    shutil.rmtree(checkpoint)
    with pytest.raises(CheckpointError, match=f"points at {checkpoint}, which is missing"):
        latest_checkpoint(checkpoint.parent)


def test_checkpoint_of_another_process_count_is_refused(checkpoint, tmp_path):
    """A checkpoint holds one RNG state per DDP process; resuming it with another count is an error."""
    trainer = Trainer(tiny(), TrainConfig(max_steps=4, warmup_steps=0, precision="fp32", device="cpu",
                                          sample_tokens=0),
                      LanguageModeling(np.arange(200, dtype=np.uint16), np.arange(40, dtype=np.uint16)),
                      checkpoint_dir=tmp_path)
    state = trainer.state_dict()
    save_checkpoint(tmp_path, trainer.model, {**state, "step": 3, "rng": state["rng"] * 2})
    with pytest.raises(CheckpointError, match="written by 2 process\\(es\\), this run has 1"):
        trainer.resume()


def test_two_processes_open_a_new_tracking_store_at_once(tmp_path):
    """Without the lock one of them fails creating the SQLite tables (duplicate column) or the experiment."""
    code = ("import os, sys; os.environ['DVC_ROOT'] = sys.argv[1]; from gptcore.settings.tracking import "
            "TrackingConfig; from gptcore.tracking.runs import Tracker; Tracker.start(TrackingConfig(), 'x', {}, {})")
    for attempt in range(3):
        root = tmp_path / str(attempt)
        root.mkdir()
        processes = [subprocess.Popen([sys.executable, "-c", code, str(root)], stderr=subprocess.PIPE, text=True)
                     for _ in range(2)]
        for process in processes:
            assert process.wait(timeout=120) == 0, process.stderr.read()
            process.stderr.close()


def test_identical_files_become_one_and_stay_whole_when_a_name_goes(tmp_path, monkeypatch):
    from gptcore.atomic import link_identical_files

    model, logged = tmp_path / "models", tmp_path / "mlruns" / "artifacts" / "models"
    for folder in (model, logged):
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights" * 1000)
        (folder / "mlflow_run.json").write_text('{"run_id": "a"}' if folder == model else '{"run_id": "b"}')
    (logged / "MLmodel").write_text("flavors: {}")
    link_identical_files(model, tmp_path / "mlruns")
    assert (logged / "model.safetensors").samefile(model / "model.safetensors")
    assert not (logged / "mlflow_run.json").samefile(model / "mlflow_run.json")  # other bytes: left alone
    assert sorted(p.name for p in logged.iterdir()) == ["MLmodel", "mlflow_run.json", "model.safetensors"]
    atomic_write_text(model / "model.safetensors", "retrained")  # the workspace moves on: the logged one stays
    assert (logged / "model.safetensors").read_bytes() == b"weights" * 1000

    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "model.safetensors").write_text("retrained")

    def other_file_system(source, target):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", other_file_system)
    link_identical_files(model, tmp_path / "copy")  # no link possible: the copy stays, nothing left behind
    assert [p.name for p in (tmp_path / "copy").iterdir()] == ["model.safetensors"]
    assert (tmp_path / "copy" / "model.safetensors").stat().st_nlink == 1
