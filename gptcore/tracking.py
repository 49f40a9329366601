"""MLflow tracking: the embedded store under <repo>/mlruns, one run per pipeline execution, batched logging.

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
import time
import warnings
from pathlib import Path

from filelock import FileLock

from .atomic import link_identical_files
from .callbacks import RECORD_KEYS, TrainerCallback
from .plots import CURVES
from .settings import rule
from .settings.generate import GenerateConfig
from .errors import GptcoreError, renamed_keys
from .settings.tracking import TrackingConfig

RUN_FILE = "mlflow_run.json"
# MLflow 3 opens an experiment without this tag in its GenAI view (traces, judges); this value is the
# UI's "Model training" kind
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# per-step metrics: the curves of plots/train.csv and plots/eval.csv under "<file>/<column>", plus speed
STEP_METRICS = {f"train/{column}": key for column, key in CURVES["train"].items()} | \
    {"train/tokens_per_second": "tokens_per_second"}
EVAL_METRICS = {f"eval/{column}": key for column, key in CURVES["eval"].items() if column != "tokens_seen"}
# the generate settings the logged pyfunc model takes as inference params
MODEL_PARAMS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop_at_eos")


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


@contextlib.contextmanager
def fluent_store(uri: str):
    """MLflow's fluent API (which log_model needs) on `uri` for the block. The process's tracking and
    registry URIs, and the environment variables MLflow sets with them for subprocesses, are put back
    after: a library call leaves its caller's MLflow set-up as it found it."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry
    from mlflow.tracking._tracking_service import utils as tracking

    variables = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = tracking._tracking_uri, registry._registry_uri, {name: os.environ.get(name) for name in variables}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        tracking._tracking_uri, registry._registry_uri = saved[0], saved[1]
        for name, value in saved[2].items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class Tracker:
    """A handle on one MLflow run; every write goes through MlflowClient in batches."""

    def __init__(self, client, uri: str, run_id: str, last_step: int = 0):
        self.client, self.uri, self.run_id = client, uri, run_id
        self.last_step = last_step  # of the training run, where later stages log their summary metrics

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
                print(f"warning: MLflow server {uri} unreachable; logging to the local store {local_uri}")
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

    def log_metrics(self, metrics: dict, step: int | None = None):
        self.client.log_batch(self.run_id, metrics=as_metrics(metrics, step or 0))

    def set_tags(self, tags: dict):
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

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

        monitor = SystemMetricsMonitor(self.run_id, sampling_interval=seconds, tracking_uri=self.uri)
        monitor.start()
        try:
            yield
        finally:
            monitor.collect_metrics()  # a last sample (sent by finish): a run shorter than one interval gets one
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.finish()

    def log_model(self, model_dir, registered_name: str | None, example_prompt: str) -> str | None:
        """model_dir as the run's MLflow model `model` (gptcore/pyfunc_model.py), with a signature (prompts
        and sampler params in, text out) and an input example; registered under registered_name. Returns
        the registered version (None when not registered)."""
        import pandas as pd
        from mlflow.models import ModelSignature
        from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

        defaults = GenerateConfig()
        kinds = {"int": "long", "float": "double", "bool": "boolean"}
        params = ParamSchema([ParamSpec(name, kinds[rule(GenerateConfig.__dataclass_fields__[name]).kind],
                                        getattr(defaults, name)) for name in MODEL_PARAMS])
        signature = ModelSignature(inputs=Schema([ColSpec("string", "prompt")]),
                                   outputs=Schema([ColSpec("string", "text")]), params=params)
        return self.log_pyfunc("pyfunc_model.py", model_dir, signature, registered_name,
                               (pd.DataFrame({"prompt": [example_prompt]}), {"max_new_tokens": 5}))

    def log_classifier(self, model_dir, registered_name: str | None, labels: list[str], example_text: str):
        """The classifier in model_dir as the run's MLflow model (gptcore/pyfunc_classifier.py): `text` in,
        `label` and one `probability_<label>` column per class out. Returns the registered version."""
        import pandas as pd
        from mlflow.models import ModelSignature
        from mlflow.types.schema import ColSpec, Schema

        signature = ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema(
            [ColSpec("string", "label"), *(ColSpec("double", f"probability_{label}") for label in labels)]))
        return self.log_pyfunc("pyfunc_classifier.py", model_dir, signature, registered_name,
                               pd.DataFrame({"text": [example_text]}))

    def log_instruct(self, model_dir, registered_name: str | None, example: dict) -> str | None:
        """The instruction model in model_dir as the run's MLflow model (gptcore/pyfunc_instruct.py):
        `instruction` and an optional `input` in, `response` out. Returns the registered version."""
        import pandas as pd
        from mlflow.models import ModelSignature
        from mlflow.types.schema import ColSpec, Schema

        signature = ModelSignature(
            inputs=Schema([ColSpec("string", "instruction"), ColSpec("string", "input", required=False)]),
            outputs=Schema([ColSpec("string", "response")]))
        return self.log_pyfunc("pyfunc_instruct.py", model_dir, signature, registered_name,
                               pd.DataFrame([{"instruction": example["instruction"], "input": example["input"]}]))

    def log_table(self, frame, artifact_file: str):
        """A table the MLflow UI shows (its evaluation view), as a JSON artifact."""
        self.client.log_table(self.run_id, frame, artifact_file)

    def log_pyfunc(self, python_model: str, model_dir, signature, registered_name: str | None,
                   input_example) -> str | None:
        """A pyfunc logged from code (python_model, a file of the gptcore package, which is its code path),
        the model folder as its artifact (safetensors: loading it unpickles nothing)."""
        import mlflow

        package = Path(__file__).resolve().parent
        with fluent_store(self.uri), mlflow.start_run(run_id=self.run_id), warnings.catch_warnings():
            # the signature is given: MLflow's advice to infer it from predict's type hints does not apply
            warnings.filterwarnings("ignore", message=".*type hints to the `predict` method")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(package / python_model), code_paths=[str(package)],
                artifacts={"model": str(model_dir)}, signature=signature, input_example=input_example,
                pip_requirements=["torch", "tiktoken", "safetensors", "pandas", "mlflow"],
                registered_model_name=registered_name)
        share_logged_files(self.client.get_logged_model(info.model_id).artifact_location, model_dir)
        return None if info.registered_model_version is None else str(info.registered_model_version)

    def write_run_file(self, folder, step: int | None = None):
        from .atomic import atomic_write_text

        self.last_step = self.last_step if step is None else step
        atomic_write_text(Path(folder) / RUN_FILE, json.dumps({"run_id": self.run_id, "step": self.last_step}))

    def finish(self, status: str = "FINISHED"):
        self.client.set_terminated(self.run_id, status)


@contextlib.contextmanager
def request_errors(section: str | None = None):
    """A served model's predict: gptcore's one-line errors (an empty prompt, a bad sampler setting, a prompt
    longer than the context) leave as MLflow input errors, which `mlflow models serve` answers with HTTP 400,
    the line in the message and no stack trace; any other exception stays a server error with its trace.
    The model's inference params are the fields of params.yaml's `section`: named as the request names them."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    try:
        yield
    except GptcoreError as error:
        message = renamed_keys(error, section, str) if section else str(error)
        raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE) from None


def share_logged_files(artifact_location: str, model_dir) -> None:
    """A model logged into a store on this file system holds hard links to the files of model_dir (which
    DVC's cache holds by hard link too, see .dvc/config), not copies: a run costs one copy of its model.
    An artifact store elsewhere (a tracking server, object storage) got a real upload and is left alone."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    if artifact_location.startswith("file:"):
        link_identical_files(model_dir, local_file_uri_to_path(artifact_location))


def chart_view_url(base: str, experiment_id: str) -> str:
    """Where MLflow 3's UI shows an experiment's runs as charts side by side. The experiment's own page
    opens on the GenAI overview (traces, latency) in a new browser, whatever the experiment's kind tag."""
    return f"{base}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART"


def serve_ui(experiment: str, host: str, port: int, open_browser: bool) -> None:
    """`mlflow ui` on the project's embedded store (its artifact root included), until interrupted; the
    chart view of `experiment` (created if it is new, as training runs) is printed and, where a browser can
    be started, opened."""
    import urllib.request
    import webbrowser

    root = repo_root()
    _, uri, experiment_id = Tracker.open_local(root, experiment)
    _, artifact_root = local_store(root)
    base = f"http://{host}:{port}"
    server = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root", artifact_root,
                               "--host", host, "--port", str(port)])
    try:
        deadline = time.monotonic() + 120
        while server.poll() is None:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TrackingUnavailable(f"mlflow ui did not answer on {base} within 120 s") from None
                time.sleep(0.5)
        else:
            raise TrackingUnavailable(f"mlflow ui exited ({server.returncode}); is port {port} free? (--port)")
        url = chart_view_url(base, experiment_id)
        print(f"MLflow UI of {root / 'mlruns'}: {url}", flush=True)
        if open_browser:
            webbrowser.open(url)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=30)


class TrackingCallback(TrainerCallback):
    """Buffers per-step metrics and sends them in one batch every log_every steps (and at evaluations)."""

    def __init__(self, tracker: Tracker, log_every: int = 10):
        self.tracker, self.log_every = tracker, log_every
        self.pending = []

    def on_step(self, record: dict):
        self.pending += as_metrics({name: record[key] for name, key in STEP_METRICS.items()}, record["step"])
        if record["step"] % self.log_every == 0:
            self.flush()

    def on_eval(self, record: dict):
        self.pending += as_metrics({name: record[key] for name, key in EVAL_METRICS.items()}, record["step"])
        self.flush()

    def on_epoch(self, record: dict):
        self.log_measured("eval", record)

    def on_zero_shot(self, record: dict):
        self.log_measured("zero_shot", record)

    def log_measured(self, prefix: str, record: dict):
        """A record's measurements as <prefix>/<key> at its step, sent now."""
        self.pending += as_metrics({f"{prefix}/{key}": value for key, value in record.items()
                                    if key not in RECORD_KEYS}, record["step"])
        self.flush()

    def on_sample(self, record: dict):
        self.tracker.log_text(record["text"], f"training_samples/step-{record['step']:07d}.txt")

    def on_train_end(self, history: dict):
        self.flush()

    def flush(self):
        for start in range(0, len(self.pending), 1000):  # MLflow takes at most 1000 metrics per batch
            self.tracker.client.log_batch(self.tracker.run_id, metrics=self.pending[start:start + 1000])
        self.pending = []
