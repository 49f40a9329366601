"""MLflow runs: the embedded store under <repo>/mlruns (or a tracking server), one run per pipeline execution,
written in batches through MlflowClient.

The train stage creates the run and records its id and last step next to the model
(models/mlflow_run.json); the evaluate and generate stages add to that run, so one `dvc repro` or
`dvc exp run` is one MLflow run. Metric names are grouped as the MLflow UI and `dvc plots` group them:
train/* per step, eval/* at each periodic evaluation, evaluate/* for the evaluate stage's full splits
(at the last training step), system/* for the machine's use.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock

from ..atomic import atomic_write_text
from ..errors import GptcoreError
from ..settings.tracking import TrackingConfig

RUN_FILE = "mlflow_run.json"
# MLflow 3 opens an experiment without this tag in its GenAI view (traces, judges); this value is the
# UI's "Model training" kind
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


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


def recorded_run(folder) -> tuple[str | None, object]:
    """(run id, MLflow run) of the run that made the model in folder (its mlflow_run.json), the run read from
    MLFLOW_TRACKING_URI or the project's store; None for what is not there. Reading never creates a store."""
    run_file = Path(folder) / RUN_FILE
    if not run_file.is_file():
        return None, None
    run_id = json.loads(run_file.read_text()).get("run_id")
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        try:
            database = repo_root() / "mlruns" / "mlflow.db"
        except TrackingUnavailable:
            return run_id, None
        if not database.is_file():
            return run_id, None
        uri = f"sqlite:///{database}"
    from mlflow.tracking import MlflowClient

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        return run_id, MlflowClient(uri).get_run(run_id)
    except Exception:  # another store, a deleted run, an unreachable server
        return run_id, None


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

    def __init__(self, client, uri: str, run_id: str, last_step: int = 0, logged_through: dict | None = None):
        self.client, self.uri, self.run_id = client, uri, run_id
        self.last_step = last_step  # of the training run, where later stages log their summary metrics
        # a continued run's metrics -> the last step it holds of each: those steps are not logged again
        self.logged_through = logged_through

    @classmethod
    def connect(cls, tracking: TrackingConfig):
        """The client for MLFLOW_TRACKING_URI if set (a shared server), else the embedded store.

        An unreachable server fails here, before any compute, unless tracking.on_unreachable is 'local'.
        """
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        root = repo_root()
        local_uri, _ = local_store(root)
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
                print(f"warning: MLflow server {uri} unreachable; logging to the local store {local_uri}",
                      file=sys.stderr)
                uri = None
        if uri:
            return client, uri, cls.experiment_id(client, tracking.experiment, None), root
        return *cls.open_local(root, tracking.experiment), root

    @classmethod
    def open_local(cls, root: Path, experiment: str) -> tuple:
        """(client, tracking URI, experiment id) of the embedded store under root, the experiment created if
        new. Two processes opening a new SQLite store at once (`dvc queue start -j 2` on a fresh project) both
        create its tables and both create the experiment, and one of them fails: opening is serialised."""
        from mlflow.tracking import MlflowClient

        uri, artifact_root = local_store(root)
        with FileLock(root / "mlruns" / "mlflow.db.lock"):
            client = MlflowClient(uri)
            return client, uri, cls.experiment_id(client, experiment, f"{artifact_root}/{experiment}")

    @staticmethod
    def experiment_id(client, name: str, artifact_location: str | None) -> str:
        """The experiment's id, created (as model training, see EXPERIMENT_KIND) if it does not exist."""
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_KIND)
        for key, value in EXPERIMENT_KIND.items():
            if experiment.tags.get(key) != value:  # made by an earlier gptcore
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id

    @classmethod
    def start(cls, tracking: TrackingConfig, name: str, tags: dict, params: dict) -> "Tracker":
        from mlflow.entities import Param

        client, uri, experiment_id, root = cls.connect(tracking)
        experiment_name = os.environ.get("DVC_EXP_NAME")
        tags = {"git_commit": git_commit(root), "dvc_experiment": experiment_name or "", **tags}
        run = client.create_run(experiment_id, run_name=experiment_name or name, tags=tags)
        tracker = cls(client, uri, run.info.run_id)
        items = [Param(k, v[:6000]) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(tracker.run_id, params=items[start:start + 100])
        return tracker

    @classmethod
    def attach(cls, tracking: TrackingConfig, model_dir, params: dict, stage: str) -> "Tracker":
        """Continue the run that trained the model in model_dir; a new one if it is gone or params clash."""
        client, uri, experiment_id, _ = cls.connect(tracking)
        run_file = Path(model_dir) / RUN_FILE
        recorded = json.loads(run_file.read_text()) if run_file.is_file() else {}
        run_id = recorded.get("run_id")
        flat = flatten(params)
        try:
            logged = client.get_run(run_id).data.params if run_id else None
        except Exception:  # the run is not in this store (another tracking URI, a deleted run)
            logged = None
        if logged is not None and all(logged.get(k, v) == v for k, v in flat.items()):
            tracker = cls(client, uri, run_id, recorded.get("step", 0))
            client.update_run(run_id, status="RUNNING")
        else:
            name = os.environ.get("DVC_EXP_NAME") or f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
            run = client.create_run(experiment_id, run_name=name, tags={"model_run_id": run_id or ""})
            tracker = cls(client, uri, run.info.run_id)
        from mlflow.entities import Param

        new = [Param(k, v) for k, v in flat.items() if logged is None or k not in logged]
        if new:
            tracker.client.log_batch(tracker.run_id, params=new)
        return tracker

    @classmethod
    def resume(cls, tracking: TrackingConfig, folder) -> "Tracker | None":
        """Continue the unfinished run recorded in folder by a stage that was stopped or killed, whether it
        resumes from a checkpoint or starts again (killed before the first): one run per pipeline execution,
        and no step logged twice. None when that run is gone from the store."""
        client, uri, _, _ = cls.connect(tracking)
        run_id = json.loads((Path(folder) / RUN_FILE).read_text()).get("run_id")
        try:
            metrics = client.get_run(run_id).data.metrics
        except Exception:  # not in this store (another tracking URI, a deleted run)
            return None
        logged_through = {key: max(point.step for point in client.get_metric_history(run_id, key)) for key in metrics}
        client.update_run(run_id, status="RUNNING")
        return cls(client, uri, run_id, logged_through=logged_through)

    def log_metrics(self, metrics: dict, step: int | None = None):
        self.client.log_batch(self.run_id, metrics=as_metrics(metrics, step or 0))

    def set_tags(self, tags: dict):
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def tag_runtime(self, described: dict, prefix: str = "runtime"):
        """What made a stage's numbers (Runtime.describe()): tags, not metrics, so that runs compare by number."""
        self.set_tags({f"{prefix}.{k}": v for k, v in described.items()})

    def log_text(self, text: str, artifact_file: str):
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifact(self, path, artifact_path: str | None = None):
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dataset(self, name: str, digest: str, source: str, profile: dict, context: str = "training"):
        """The corpus as a dataset input of the run: its name, a digest (of its token files), where it came
        from and a profile (its sha256, token counts)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        source_type = "http" if source.startswith(("http://", "https://")) else "local"
        dataset = Dataset(name=name, digest=digest[:36], source_type=source_type,
                          source=json.dumps({"uri" if source_type == "http" else "path": source}),
                          profile=json.dumps(profile))
        self.client.log_inputs(self.run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])

    @contextlib.contextmanager
    def system_metrics(self, seconds: int | None):
        """Sample CPU, memory (and GPU) use every `seconds` as system/* metrics while the block runs."""
        if seconds is None:
            yield
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=seconds, tracking_uri=self.uri,
                                       resume_logging=self.logged_through is not None)
        monitor.start()
        try:
            yield
        finally:
            monitor.collect_metrics()  # a last sample (sent by finish): a run shorter than one interval gets one
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.finish()

    def log_table(self, frame, artifact_file: str):
        """A table the MLflow UI shows (its evaluation view), as a JSON artifact."""
        self.client.log_table(self.run_id, frame, artifact_file)

    def write_run_file(self, folder, step: int | None = None):
        self.last_step = self.last_step if step is None else step
        atomic_write_text(Path(folder) / RUN_FILE, json.dumps({"run_id": self.run_id, "step": self.last_step}))

    def finish(self, status: str = "FINISHED"):
        self.client.set_terminated(self.run_id, status)
