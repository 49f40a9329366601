"""End to end: the DVC pipeline on the tiny preset in a temporary copy of the project."""

import csv
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_project, mlflow_client, run
from gptcore.machine import cpu_model
from gptcore.model.runtime import resolve_precision
from gptcore.params import yaml_1_2

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_dir):
    return make_project(tmp_path_factory.mktemp("project"))


def test_repro_runs_every_stage_and_tracks_one_run(project):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    run(["dvc", "repro"], project, env=env)
    train_metrics = json.loads((project / "metrics" / "train.json").read_text())
    eval_metrics = json.loads((project / "metrics" / "eval.json").read_text())
    eval_run = json.loads((project / "metrics" / "eval_speed.json").read_text())
    assert train_metrics["steps"] == 2 * (4612 // 32 // 2)  # 2 epochs of 72 batches of 2 windows
    assert 0 < eval_metrics["val_loss"] < 10.9 and set(eval_metrics) == {"train_loss", "val_loss"}
    auto = resolve_precision("auto", torch.device("cpu"))  # what made the numbers travels with them
    assert train_metrics["runtime"]["precision"] == eval_run["runtime"]["precision"] == auto
    assert train_metrics["runtime"]["cpu"] == cpu_model() and train_metrics["runtime"]["processes"] == 1
    assert {p.name for p in (project / "samples").iterdir()} == {
        "00-every-effort-moves-you.md", "00-every-effort-moves-you.json",
        "01-i-had-always-thought-jack-gisburn.md", "01-i-had-always-thought-jack-gisburn.json"}
    sample = json.loads((project / "samples" / "00-every-effort-moves-you.json").read_text())
    assert sample["text"].startswith("Every effort moves you") and sample["sampler"]["top_k"] == 50
    model_files = {p.name for p in (project / "models").iterdir()}
    assert {"model.safetensors", "model_config.json", "mlflow_run.json"} <= model_files
    assert not list((project / "checkpoints").glob("*/step-*"))  # a finished run leaves no resume state

    client = mlflow_client(project)
    (experiment,) = [e for e in client.search_experiments() if e.name == "gptcore"]
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.data.params["train.peak_lr"] == "0.0005" and mlrun.data.params["generate.max_new_tokens"] == "8"
    assert mlrun.data.tags["model_preset"] == "tiny" and len(mlrun.data.tags["git_commit"]) == 40
    assert mlrun.data.tags["runtime.precision"] == auto and mlrun.data.tags["runtime.gptcore"]
    assert mlrun.data.tags["evaluate.runtime.precision"] == auto  # the evaluate stage's, a tag not a metric
    history = client.get_metric_history(mlrun.info.run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, train_metrics["steps"] + 1))
    # the evaluate stage's full-split values sit at the last training step, beside the last evaluation's
    assert [m.step for m in client.get_metric_history(mlrun.info.run_id, "evaluate/val_loss")] == \
        [train_metrics["steps"]]
    assert mlrun.data.metrics["evaluate/val_loss"] == eval_metrics["val_loss"]
    assert {"train/lr", "train/grad_norm", "train/tokens_per_second", "eval/train_loss", "eval/val_loss",
            "system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(mlrun.data.metrics)
    (dataset,) = mlrun.inputs.dataset_inputs
    assert dataset.dataset.name == "the-verdict.txt" and json.loads(dataset.dataset.profile)["train_tokens"] == 4612
    experiment_kind = client.get_experiment(experiment.experiment_id).tags["mlflow.experimentKind"]
    assert experiment_kind == "custom_model_development"  # the UI opens it as model training
    # metrics files hold what compares across runs; speeds are DVC outputs beside them (and in MLflow)
    assert "tokens_per_second" not in train_metrics and "tokens_per_second" not in eval_metrics
    assert json.loads((project / "metrics" / "train_speed.json").read_text())["tokens_per_second"] > 0
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"plots", "samples", "training_samples"} <= artifacts

    assert "up to date" in run(["dvc", "status", "dvc.yaml"], project)  # the root pipeline
    assert "Running stage" not in run(["dvc", "repro"], project)  # nothing changed: nothing runs


def test_train_stage_sigkilled_three_times_resumes_to_bitwise_equal_weights(project, fault_env):
    """SIGKILL mid-step 50, then inside the step-60 evaluation, then inside the step-80 checkpoint write;
    each `dvc repro` continues from the last complete checkpoint (step 40) and the last one finishes
    with the weights of the uninterrupted run."""
    run(["dvc", "repro"], project)  # the uninterrupted run (already there after the test above)
    straight = (project / "models" / "model.safetensors").read_bytes()
    # back to a project whose training never finished: no lock entry or run-cache entry DVC could
    # restore instead of running the stage
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    del lock["stages"]["train"]
    (project / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    shutil.rmtree(project / ".dvc" / "cache" / "runs")
    checkpoints = project / "checkpoints"
    for kill_at, printed, not_printed in [("step:50", "step     40 |", "step     60 |"),
                                          ("evaluate:2", "resuming from step 40", "step     60 |"),
                                          ("checkpoint:1", "step     80 |", "step    100 |")]:
        killed = subprocess.run(["dvc", "repro"], cwd=project, env=fault_env(GPTCORE_KILL_AT=kill_at),
                                capture_output=True, text=True, timeout=900)
        # -9 where the shell DVC starts execs the stage; 137 (128 + 9) where it waits for it, as dash does
        assert killed.returncode != 0 and re.search(r"exited with (-9|137)\b", killed.stderr), (kill_at, killed.stderr)
        assert printed in killed.stdout and not_printed not in killed.stdout, (kill_at, killed.stdout)
        (run_dir,) = checkpoints.iterdir()
        assert (run_dir / "latest").read_text() == "step-0000040"
    (staging,) = run_dir.glob(".step-0000080.tmp-*")  # killed between the weights and the manifest
    assert {p.name for p in staging.iterdir()} == {"model.safetensors"}
    resumed = run(["dvc", "repro"], project)
    assert f"resuming from step 40 ({run_dir})" in resumed
    assert (project / "models" / "model.safetensors").read_bytes() == straight
    assert list(checkpoints.iterdir()) == []  # finished: the resume state is gone, staging leftovers too
    assert "up to date" in run(["dvc", "status", "dvc.yaml"], project)  # the root pipeline


def test_fine_tunes_from_a_locally_saved_hugging_face_folder(project, tmp_path):
    """The trained tiny model, exported and saved again by transformers, is the starting point of a run."""
    transformers = pytest.importorskip("transformers")
    run(["dvc", "repro"], project)  # the trained tiny model (already there after the tests above)
    run(["gptcore", "export-hf", "models", str(tmp_path / "export")], project)
    hf_folder = tmp_path / "hf-gpt2-tiny"
    transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "export").save_pretrained(hf_folder)
    with open(project / "plots" / "train.csv") as handle:
        scratch_first_loss = float(next(csv.DictReader(handle))["loss"])
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml_1_2().load(original)
    params["model"]["init_from"] = str(hf_folder)
    params["train"].update(epochs=None, max_steps=10)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        refused = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, timeout=900)
        assert refused.returncode != 0  # GPT-2 folders have q/k/v biases; the params say none
        assert f"error: model.qkv_bias is False in params but True in the weights of {hf_folder}" in refused.stderr
        params["model"]["qkv_bias"] = True
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        run(["dvc", "repro"], project)
        with open(project / "plots" / "train.csv") as handle:
            tuned_first_loss = float(next(csv.DictReader(handle))["loss"])
        assert scratch_first_loss > 10 and tuned_first_loss < scratch_first_loss - 2  # it starts trained
        run_id = json.loads((project / "models" / "mlflow_run.json").read_text())["run_id"]
        mlrun = mlflow_client(project).get_run(run_id)
        assert mlrun.data.params["model.init_from"] == str(hf_folder)
    finally:
        params_file.write_text(original)


def test_zero_shot_tasks_are_evaluated_without_training_again(project):
    """Choosing the evaluate stage's tasks reruns that stage only; their metrics reach eval.json, dvc exp show
    and MLflow."""
    run(["dvc", "repro"], project)  # a trained workspace, whichever tests ran before
    out = run(["dvc", "exp", "run", "-n", "lambada-20", "-S", "zero_shot.tasks=[lambada]", "-S",
               "zero_shot.limit=20"], project)
    assert "Running stage 'evaluate'" in out and "Running stage 'train'" not in out
    metrics = json.loads((project / "metrics" / "eval.json").read_text())
    assert metrics["lambada_examples"] == 20 and 0 <= metrics["lambada_acc"] <= 1 < metrics["lambada_perplexity"]
    assert metrics["lambada_cut"] == 20  # the tiny project's 32-token context is shorter than every passage
    assert "lambada_perplexity" in run(["dvc", "exp", "show", "--json"], project)
    speed = json.loads((project / "metrics" / "eval_speed.json").read_text())
    assert speed["lambada_tokens_per_second"] > 0
    client = mlflow_client(project)
    (experiment,) = [e for e in client.search_experiments() if e.name == "gptcore"]
    logged = [r.data.metrics.get("evaluate/lambada_perplexity") for r in client.search_runs([experiment.experiment_id])]
    assert metrics["lambada_perplexity"] in logged


def test_a_benchmark_file_that_nothing_measures_reruns_no_stage_and_a_wrong_sum_stops_before_training(
        project, shared_dir, tmp_path):
    """The train and evaluate stages depend on the plan of what they measure, not on the zero_shot keys: moving
    LAMBADA's file while no stage measures it reruns the plan alone (no training, no new model version); once
    training measures it, a wrong sum of the local file stops dvc repro in the plan, before training."""
    run(["git", "checkout", "--", "params.yaml"], project)  # no zero-shot task measured, whatever ran before
    run(["dvc", "repro"], project)
    local = tmp_path / "lambada.jsonl"
    shutil.copy(shared_dir / "data" / "lambada_test.jsonl", local)
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml_1_2().load(original)
    params["zero_shot"].update(lambada_source=str(local), lambada_sha256=None)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        out = run(["dvc", "repro"], project)
        assert "Running stage 'plan-zero-shot'" in out
        assert "Running stage 'train'" not in out and "Running stage 'evaluate'" not in out
        params["zero_shot"].update(train_tasks=["lambada"], lambada_sha256="0" * 64)
        params["train"]["seed"] = 7  # training would run again
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        refused = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, timeout=900)
        assert refused.returncode != 0 and "Running stage 'train'" not in refused.stdout
        (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
        assert line.startswith(f"error: checksum mismatch for {local}: expected sha256 {'0' * 64} "
                               "(zero_shot.lambada_sha256)")
    finally:
        params_file.write_text(original)


def test_experiment_is_listed_by_dvc_and_named_in_mlflow(project):
    run(["dvc", "exp", "run", "-n", "lr-1e-3", "-S", "train.peak_lr=1e-3"], project)
    table = json.loads(run(["dvc", "exp", "show", "--json"], project))
    names = json.dumps(table)
    assert "lr-1e-3" in names and "val_loss" in names
    client = mlflow_client(project)
    (experiment,) = [e for e in client.search_experiments() if e.name == "gptcore"]
    (mlrun,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'lr-1e-3'")
    assert mlrun.data.params["train.peak_lr"] == "0.001" and mlrun.data.tags["dvc_experiment"] == "lr-1e-3"
    for metric in ("train/loss", "train/lr", "train/grad_norm", "eval/val_loss"):
        assert len(client.get_metric_history(mlrun.info.run_id, metric)) > 1
    assert max(m.value for m in client.get_metric_history(mlrun.info.run_id, "train/lr")) == pytest.approx(1e-3)
    diff = json.loads(run(["dvc", "metrics", "diff", "--json"], project))  # against HEAD, which has no metrics
    workspace = json.loads((project / "metrics" / "eval.json").read_text())
    assert diff["metrics/eval.json"]["val_loss"]["new"] == workspace["val_loss"]


def test_dvc_exp_show_fits_120_columns_with_the_headline_metrics_beside_the_changed_params(project):
    """The README's `dvc exp show --only-changed` was about 300 columns wide, 54 of them the runtime of six metrics
    files (torch version, CPU name, flags): DVC rendered each cell as "…". Metrics are numbers that compare; what
    made them is a tag and a plain output, so `dvc metrics diff` lists numbers only."""
    run(["dvc", "exp", "remove", "--all-commits"], project)  # two experiments on a committed pipeline
    run(["git", "checkout", "--", "params.yaml"], project)
    run(["dvc", "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "the pipeline's results"], project)
    for name, change in (("lr-1e-3", "train.peak_lr=1e-3"), ("seed-5", "train.seed=5")):  # seed 7: queued below
        run(["git", "checkout", "--", "params.yaml"], project)
        run(["dvc", "exp", "run", "-n", name, "-S", change], project)
    table = run(["dvc", "exp", "show", "--only-changed", "--no-pager"], project, env={**os.environ, "COLUMNS": "120"})
    lines = table.splitlines()
    columns = run(["dvc", "exp", "show", "--only-changed", "--csv"], project).splitlines()[0]
    assert "…" not in table and max(map(len, lines)) <= 120, (table, columns)
    (header,) = [line.split() for line in lines if line.split()[:1] == ["Experiment"]]
    assert header == ["Experiment", "Created", "train_loss", "val_loss", "train.peak_lr", "train.seed"], table
    assert any("[seed-5]" in line for line in lines) and any("[lr-1e-3]" in line for line in lines)
    for path, change in json.loads(run(["dvc", "metrics", "diff", "--json", "HEAD~1"], project)).items():
        assert all(isinstance(values["new"], (int, float)) for values in change.values()), (path, change)
    assert "runtime" not in json.dumps(json.loads(run(["dvc", "metrics", "show", "--json"], project)))
    assert json.loads((project / "metrics" / "train.json").read_text())["runtime"]["precision"]  # the record


def test_queued_experiments_run_in_a_temp_copy_and_log_to_the_project_store(project):
    run(["dvc", "exp", "run", "--queue", "-n", "queued-seed-7", "-S", "train.seed=7"], project)
    run(["dvc", "exp", "run", "--run-all"], project)
    assert "queued-seed-7" in run(["dvc", "exp", "show", "--json"], project)
    client = mlflow_client(project)  # DVC_ROOT points queued runs back at this project's mlruns/
    (experiment,) = [e for e in client.search_experiments() if e.name == "gptcore"]
    (mlrun,) = client.search_runs([experiment.experiment_id], "attributes.run_name = 'queued-seed-7'")
    assert mlrun.data.params["train.seed"] == "7"
    assert "plots/train.csv" in run(["dvc", "plots", "diff", "--json"], project)


def killed_then_finished(project, fault_env, kill_at: str, seed: int) -> str:
    """A run of its own (another seed: another checkpoint folder, no run-cache entry) of 40 steps, checkpointed
    every 20 and logged every 10: `dvc repro train` SIGKILLed at kill_at, then run again to its end, the params
    put back after. The id of the run the killed stage recorded."""
    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml_1_2().load(original)
    params["train"].update(seed=seed, epochs=None, max_steps=40, checkpoint_every=20)
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        killed = subprocess.run(["dvc", "repro", "train"], cwd=project, env=fault_env(GPTCORE_KILL_AT=kill_at),
                                capture_output=True, text=True, timeout=900)
        assert killed.returncode != 0 and re.search(r"exited with (-9|137)\b", killed.stderr), killed.stderr
        (run_dir,) = (project / "checkpoints").iterdir()
        killed_run = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
        run(["dvc", "repro", "train"], project)
    finally:
        params_file.write_text(original)
    return killed_run


def assert_one_finished_run_with_every_step_once(project, run_id: str, steps: int):
    client = mlflow_client(project)
    assert json.loads((project / "models" / "mlflow_run.json").read_text())["run_id"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    for metric in ("train/loss", "train/lr", "eval/val_loss", "system/cpu_utilization_percentage"):
        logged = [point.step for point in client.get_metric_history(run_id, metric)]
        assert len(logged) == len(set(logged)), (metric, logged)
    assert [point.step for point in client.get_metric_history(run_id, "train/loss")] == list(range(1, steps + 1))


def all_runs(project) -> list:
    client = mlflow_client(project)
    return client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])


def test_a_run_killed_after_a_checkpoint_and_resumed_logs_no_step_twice(project, fault_env):
    """Killed mid-step 35: steps 21-30 were logged (at step 30), the resume starts at the step-20 checkpoint and
    logged them again (MLflow held 660 points of train/loss for 650 steps)."""
    run_id = killed_then_finished(project, fault_env, "step:35", seed=21)
    assert_one_finished_run_with_every_step_once(project, run_id, 40)


def test_a_run_killed_before_its_first_checkpoint_is_continued_not_left_running(project, fault_env):
    """Killed mid-step 15, before the step-20 checkpoint: its MLflow run stayed RUNNING for ever and the rerun
    opened another. The rerun continues it: one run, finished, steps 1-10 not logged twice."""
    runs_before = len(all_runs(project))
    run_id = killed_then_finished(project, fault_env, "step:15", seed=22)
    assert_one_finished_run_with_every_step_once(project, run_id, 40)
    assert len(all_runs(project)) == runs_before + 1
