"""The Ops half, end to end on the tiny preset: the registered model loads and serves, an MLflow server
lists the run, a queued grid runs two at a time into one store, data and models travel through a DVC
remote."""

import json
import os
import subprocess
import time

import pandas as pd
import pytest

from conftest import Server, free_port, http, make_project, mlflow_client, refusal, run, store_env
from gptcore.cli import main
from gptcore.tracking.runs import RUN_FILE

pytestmark = pytest.mark.slow
PROMPT = "Every effort moves you"


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_dir):
    root = make_project(tmp_path_factory.mktemp("ops"))
    run(["dvc", "repro"], root)
    return root


def cli_text(model_dir, capsys, *options) -> str:
    capsys.readouterr()
    assert main(["generate", PROMPT, "--model", str(model_dir), *options]) == 0
    return capsys.readouterr().out.rstrip("\n")


def test_registered_model_loads_and_serves_the_text_of_gptcore_generate(project, capsys, monkeypatch):
    import mlflow

    client = mlflow_client(project)
    (version,) = client.search_model_versions("name = 'gptcore'")
    model_run = client.get_run(version.run_id)
    assert model_run.data.tags["model_preset"] == "tiny"
    expected = cli_text(project / "models", capsys, "--max-new-tokens", "8", "--seed", "5")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_env(project)["MLFLOW_TRACKING_URI"])
    model = mlflow.pyfunc.load_model(f"models:/gptcore/{version.version}")
    assert {spec.name for spec in model.metadata.signature.params} >= {"temperature", "top_k", "top_p", "seed"}
    predicted = model.predict(pd.DataFrame({"prompt": [PROMPT]}), params={"max_new_tokens": 8, "seed": 5})
    assert predicted["text"].tolist() == [expected]

    port = free_port()
    serve = ["mlflow", "models", "serve", "-m", "models:/gptcore/latest", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)]
    too_long = " ".join(["effort"] * 40)  # 40 tokens: the tiny preset's context is 32
    with Server(serve, port, project, store_env(project)) as url:
        answer = http(f"{url}/invocations", {"dataframe_records": [{"prompt": PROMPT}],
                                             "params": {"max_new_tokens": 8, "seed": 5}})
        refusals = [refusal(f"{url}/invocations", {"dataframe_records": [{"prompt": prompt}], "params": params})
                    for prompt, params in (("", {}), (PROMPT, {"temperature": -3.0}), (too_long, {}))]
    assert answer == {"predictions": [{"text": expected}]}
    for (status, body), reason in zip(refusals, ("prompt[0] is empty", "temperature = -3.0 is invalid",
                                                 "longer than the model's context")):
        assert status == 400 and reason in body["message"] and "stack_trace" not in body, body
        assert "Traceback" not in json.dumps(body) and str(project) not in json.dumps(body)


def test_an_mlflow_server_lists_the_run_with_its_histories(project):
    port = free_port()
    server = ["mlflow", "server", "--backend-store-uri", f"sqlite:///{project / 'mlruns' / 'mlflow.db'}",
              "--default-artifact-root", (project / "mlruns" / "artifacts").as_uri(), "--host", "127.0.0.1",
              "--port", str(port), "--workers", "1"]
    steps = json.loads((project / "metrics" / "train.json").read_text())["steps"]
    with Server(server, port, project, store_env(project)) as url:
        api = f"{url}/api/2.0/mlflow"
        experiment = http(f"{api}/experiments/get-by-name?experiment_name=gptcore")["experiment"]
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in experiment["tags"]
        (listed,) = http(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        run_id = listed["info"]["run_id"]
        for metric, points in (("train/loss", steps), ("train/lr", steps), ("eval/val_loss", steps // 20 + 1)):
            history = http(f"{api}/metrics/get-history?run_id={run_id}&metric_key={metric}")["metrics"]
            assert len(history) == points, metric


def test_a_tracking_server_gets_a_real_upload_of_the_model(project, tmp_path, monkeypatch):
    """Only a store on this file system holds hard links: through a server the files are uploaded."""
    from gptcore.settings.tracking import TrackingConfig
    from gptcore.tracking.models import log_language_model
    from gptcore.tracking.runs import Tracker

    port = free_port()
    stored = tmp_path / "server-artifacts"
    server = ["mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
              "--artifacts-destination", str(stored), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    weights = project / "models" / "model.safetensors"
    with Server(server, port, project, store_env(project)) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        monkeypatch.setenv("DVC_ROOT", str(project))
        tracker = Tracker.start(TrackingConfig(registered_model=None), "upload", {}, {})
        log_language_model(tracker, project / "models", None, PROMPT)
        tracker.finish()
        assert "MLFLOW_REGISTRY_URI" not in os.environ  # the library left the process's MLflow set-up alone
    (uploaded,) = stored.rglob("model.safetensors")
    assert uploaded.read_bytes() == weights.read_bytes()
    assert uploaded.stat().st_nlink == 1 and not uploaded.samefile(weights)


def queue_report(project) -> str:
    """The queue's status and the end of the log of each experiment that failed or still runs."""
    status = run(["dvc", "queue", "status"], project)
    tasks = [line.split()[0] for line in status.splitlines()[1:] if line.split()[-1:] in (["Failed"], ["Running"])]
    logs = [subprocess.run(["dvc", "queue", "logs", task], cwd=project, capture_output=True, text=True).stdout[-3000:]
            for task in tasks]
    return "\n".join([status, *logs])


def test_a_queued_grid_runs_two_at_a_time_into_one_store(tmp_path, monkeypatch):
    """On a project with no MLflow store yet: the two workers also create the store and the experiment at the
    same time. The data stages run first, as the README says (two workers building the same stage race in
    DVC's run cache)."""
    (tmp_path / "grid").mkdir()
    project = make_project(tmp_path / "grid")
    run(["dvc", "repro", "tokenize", "plan-zero-shot"], project)
    assert not (project / "mlruns").exists()
    before = disk_use(project)
    grid = ["-S", "train.peak_lr=choice(3e-4,1e-3)", "-S", "train.seed=range(1,3)", "-S", "train.max_steps=12",
            "-S", "train.eval_freq=6"]
    run(["dvc", "exp", "run", "--queue", *grid], project)
    # the workers inherit the starting command's streams: captured, they would hold it until the last one exits
    with open(tmp_path / "queue-start.log", "w") as log:
        started = subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, stdout=log,
                                 stderr=subprocess.STDOUT, timeout=120)
    assert started.returncode == 0, (tmp_path / "queue-start.log").read_text()
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            status = run(["dvc", "queue", "status"], project)
            if "Queued" not in status and "Running" not in status:
                break
            time.sleep(5)
        assert status.count("Success") == 4, queue_report(project)
    finally:  # no worker outlives the test
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=project, capture_output=True, timeout=120)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], project))
    experiments = [exp for commit in shown for exp in (commit.get("experiments") or [])]
    assert len(experiments) == 4
    client = mlflow_client(project)
    (experiment,) = client.search_experiments(filter_string="name = 'gptcore'")
    runs = client.search_runs([experiment.experiment_id], "params.`train.max_steps` = '12'")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert {(r.data.params["train.peak_lr"], r.data.params["train.seed"]) for r in runs} == \
        {(lr, seed) for lr in ("0.0003", "0.001") for seed in ("1", "2")}
    spans = sorted((r.info.start_time, r.info.end_time) for r in runs)
    assert any(later_start < end for (_, end), (later_start, _) in zip(spans, spans[1:]))  # side by side
    for finished in runs:  # every step and the evaluate stage arrived, nothing lost to a locked database
        assert len(client.get_metric_history(finished.info.run_id, "train/loss")) == 12
        assert "evaluate/val_loss" in finished.data.metrics

    # one copy of each model: the temporary copies, DVC's cache and MLflow's artifacts share the bytes
    models = distinct_models(project)
    assert len(models) == 4, models
    # the workspace takes one of them, as `dvc exp apply` does for the root pipeline (the other pipelines'
    # outputs, never run here, have no lock entries that apply could check out)
    run(["git", "checkout", experiments[0]["revs"][0]["rev"], "--", "dvc.lock", "params.yaml"], project)
    run(["dvc", "checkout", "dvc.yaml"], project)
    added = disk_use(project) - before
    model_bytes = sum(models.values())
    print(f"grid of 4: {added / 2**20:.1f} MiB added for 4 models of {model_bytes / 4 / 2**20:.1f} MiB")
    assert distinct_models(project) == models and model_bytes <= added <= model_bytes + 8 * 2**20

    # every version loads, and one that is no longer in the workspace serves
    import mlflow

    versions = client.search_model_versions("name = 'gptcore'")
    assert {v.run_id for v in versions} == {r.info.run_id for r in runs}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_env(project)["MLFLOW_TRACKING_URI"])
    frame = pd.DataFrame({"prompt": [PROMPT]})
    texts = {v.version: mlflow.pyfunc.load_model(f"models:/gptcore/{v.version}").predict(
        frame, params={"max_new_tokens": 4, "temperature": 0.0})["text"][0] for v in versions}
    applied = json.loads((project / "models" / RUN_FILE).read_text())["run_id"]
    elsewhere = next(v.version for v in versions if v.run_id != applied)
    port = free_port()
    serve = ["mlflow", "models", "serve", "-m", f"models:/gptcore/{elsewhere}", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)]
    with Server(serve, port, project, store_env(project)) as url:
        answer = http(f"{url}/invocations", {"dataframe_records": [{"prompt": PROMPT}],
                                             "params": {"max_new_tokens": 4, "temperature": 0.0}})
    assert answer == {"predictions": [{"text": texts[elsewhere]}]}


def disk_use(project) -> int:
    """Bytes on disk of the whole project (workspace, .git, DVC's cache and temporary copies, the MLflow
    store), as `du` counts them: a file with several hard links once."""
    return int(run(["du", "-s", "-B1", "."], project).split()[0])


def distinct_models(project) -> dict[str, int]:
    """{sha256: size} of the model weights stored there, each checked to be stored once (one inode)."""
    import hashlib

    inodes: dict[str, set] = {}
    for path in project.rglob("*"):
        if path.is_file() and path.stat().st_size > 2**20 and path.name != "mlflow.db":
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            inodes.setdefault(digest, set()).add((path.stat().st_ino, path.stat().st_size))
    assert all(len(stored) == 1 for stored in inodes.values()), inodes
    return {digest: next(iter(stored))[1] for digest, stored in inodes.items()}


def test_data_and_models_travel_through_a_dvc_remote(project, tmp_path, capsys):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], project)
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "trained, with a remote"], project)
    run(["dvc", "push"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "models").exists()
    run(["dvc", "pull", "dvc.yaml"], clone)  # the root pipeline's outputs (the classifier's were not run)
    for output in ("data/tokens/train.bin", "models/model.safetensors"):
        assert (clone / output).read_bytes() == (project / output).read_bytes()
    assert "Running stage" not in run(["dvc", "repro"], clone)  # nothing to retrain
    assert cli_text(clone / "models", capsys, "--seed", "1") == cli_text(project / "models", capsys, "--seed", "1")
