"""MLflow tracking: the embedded store under <repo>/mlruns, one run per pipeline execution, batched logging.

The train stage creates the run and records its id next to the model (models/mlflow_run.json); the
evaluate and generate stages add to that run, so one `dvc repro` or `dvc exp run` is one MLflow run.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from .callbacks import TrainerCallback
from .errors import GptcoreError
from .settings.tracking import TrackingConfig

RUN_FILE = "mlflow_run.json"


class TrackingUnavailable(GptcoreError):
    pass


def repo_root() -> Path:
    """The project root: $DVC_ROOT (set by DVC for stage commands, also in queued runs), else git's top."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True)
        return Path(top.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        raise TrackingUnavailable("cannot find the project root: run inside the git repository or under DVC, "
                                  "or set MLFLOW_TRACKING_URI") from None


def local_store(root: Path) -> tuple[str, str]:
    """(tracking URI, artifact root) of the embedded store: SQLite + a folder, both under <root>/mlruns."""
    (root / "mlruns" / "artifacts").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}", (root / "mlruns" / "artifacts").as_uri()


def git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flatten(params: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list) else str(value)
    return flat


def as_metrics(values: dict, step: int) -> list:
    """MLflow Metric entities for one step, stamped now, ready for log_batch."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(key, float(value), now, step) for key, value in values.items()]


class Tracker:
    """A handle on one MLflow run; every write goes through MlflowClient in batches."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    @classmethod
    def connect(cls, tracking: TrackingConfig):
        """The client for MLFLOW_TRACKING_URI if set (a shared server), else the embedded store.

        An unreachable server fails here, before any compute, unless tracking.on_unreachable is 'local'.
        """
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        root = repo_root()
        local_uri, artifact_root = local_store(root)
        if uri:
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            client = MlflowClient(uri)
            try:
                client.search_experiments(max_results=1)
            except Exception as error:
                if tracking.on_unreachable != "local":
                    raise TrackingUnavailable(
                        f"MLflow tracking server {uri} is unreachable ({type(error).__name__}); start it, unset "
                        f"MLFLOW_TRACKING_URI to use the local store, or set tracking.on_unreachable: local"
                    ) from None
                print(f"warning: MLflow server {uri} unreachable; logging to the local store {local_uri}")
                uri = None
        if not uri:
            client = MlflowClient(local_uri)
        experiment = client.get_experiment_by_name(tracking.experiment)
        if experiment is None:
            experiment_id = client.create_experiment(
                tracking.experiment, artifact_location=None if uri else f"{artifact_root}/{tracking.experiment}")
        else:
            experiment_id = experiment.experiment_id
        return client, experiment_id, root

    @classmethod
    def start(cls, tracking: TrackingConfig, name: str, tags: dict, params: dict) -> "Tracker":
        from mlflow.entities import Param

        client, experiment_id, root = cls.connect(tracking)
        experiment_name = os.environ.get("DVC_EXP_NAME")
        tags = {"git_commit": git_commit(root), "dvc_experiment": experiment_name or "", **tags}
        run = client.create_run(experiment_id, run_name=experiment_name or name, tags=tags)
        tracker = cls(client, run.info.run_id)
        items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(tracker.run_id, params=items[start:start + 100])
        return tracker

    @classmethod
    def attach(cls, tracking: TrackingConfig, model_dir, params: dict, stage: str) -> "Tracker":
        """Continue the run that trained the model in model_dir; a new one if it is gone or params clash."""
        client, experiment_id, _ = cls.connect(tracking)
        run_file = Path(model_dir) / RUN_FILE
        run_id = json.loads(run_file.read_text())["run_id"] if run_file.is_file() else None
        flat = flatten(params)
        try:
            logged = client.get_run(run_id).data.params if run_id else None
        except Exception:  # the run is not in this store (another tracking URI, a deleted run)
            logged = None
        if logged is not None and all(logged.get(k, v) == v for k, v in flat.items()):
            tracker = cls(client, run_id)
            client.update_run(run_id, status="RUNNING")
        else:
            name = os.environ.get("DVC_EXP_NAME") or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
            run = client.create_run(experiment_id, run_name=name, tags={"model_run_id": run_id or ""})
            tracker = cls(client, run.info.run_id)
        from mlflow.entities import Param

        new = [Param(k, v) for k, v in flat.items() if logged is None or k not in logged]
        if new:
            tracker.client.log_batch(tracker.run_id, params=new)
        return tracker

    def log_metrics(self, metrics: dict, step: int | None = None):
        self.client.log_batch(self.run_id, metrics=as_metrics(metrics, step or 0))

    def set_tags(self, tags: dict):
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, artifact_file: str):
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path, artifact_path: str | None = None):
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def write_run_file(self, folder):
        from .atomic import atomic_write_text

        atomic_write_text(Path(folder) / RUN_FILE, json.dumps({"run_id": self.run_id}))

    def finish(self, status: str = "FINISHED"):
        self.client.set_terminated(self.run_id, status)


class TrackingCallback(TrainerCallback):
    """Buffers per-step metrics and sends them in one batch every log_every steps (and at evaluations)."""

    STEP_KEYS = ("train_loss", "lr", "grad_norm", "tokens_seen", "tokens_per_second", "epoch")

    def __init__(self, tracker: Tracker, log_every: int = 10):
        self.tracker, self.log_every = tracker, log_every
        self.pending = []

    def on_step(self, record: dict):
        self.pending += as_metrics({key: record[key] for key in self.STEP_KEYS}, record["step"])
        if record["step"] % self.log_every == 0:
            self.flush()

    def on_eval(self, record: dict):
        self.pending += as_metrics({"val_loss": record["val_loss"], "eval_train_loss": record["train_loss"]},
                                   record["step"])
        self.flush()

    def on_sample(self, record: dict):
        self.tracker.log_text(record["text"], f"training_samples/step-{record['step']:07d}.txt")

    def on_train_end(self, history: dict):
        self.flush()

    def flush(self):
        for start in range(0, len(self.pending), 1000):  # MLflow takes at most 1000 metrics per batch
            self.tracker.client.log_batch(self.tracker.run_id, metrics=self.pending[start:start + 1000])
        self.pending = []
