"""The models a run logs to MLflow: each a pyfunc "from code" (a file of gptcore.serving, the gptcore package
as its code path, the model folder as its artifact: loading it unpickles nothing), registered under the
pipeline's name, its files hard links to the model folder's where the store is on this file system."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

from .. import serving
from ..atomic import link_identical_files
from ..settings import rule
from ..settings.generate import GenerateConfig
from .runs import Tracker

# the generate settings the served language and instruction models take as inference params
MODEL_PARAMS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop_at_eos")


def log_language_model(tracker: Tracker, model_dir, registered_name: str | None, example_prompt: str) -> str | None:
    """model_dir as the run's MLflow model `model` (gptcore/serving/language_model.py), with a signature
    (prompts and sampler params in, text out) and an input example; registered under registered_name.
    Returns the registered version (None when not registered)."""
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec("string", "prompt")]),
                               outputs=Schema([ColSpec("string", "text")]), params=sampler_params(GenerateConfig()))
    return log_pyfunc(tracker, "language_model.py", model_dir, signature, registered_name,
                      (pd.DataFrame({"prompt": [example_prompt]}), {"max_new_tokens": 5}))


def log_classifier(tracker: Tracker, model_dir, registered_name: str | None, labels: list[str],
                   example_text: str) -> str | None:
    """The classifier in model_dir as the run's MLflow model (gptcore/serving/classifier.py): `text` in,
    `label` and one `probability_<label>` column per class out. Returns the registered version."""
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    signature = ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=Schema(
        [ColSpec("string", "label"), *(ColSpec("double", f"probability_{label}") for label in labels)]))
    return log_pyfunc(tracker, "classifier.py", model_dir, signature, registered_name,
                      pd.DataFrame({"text": [example_text]}))


def log_instruction_model(tracker: Tracker, model_dir, registered_name: str | None, example: dict,
                          max_new_tokens: int) -> str | None:
    """The instruction model in model_dir as the run's MLflow model (gptcore/serving/instruction_model.py):
    `instruction` and an optional `input` in, `response` out, the sampler params greedy and at most the
    max_new_tokens it was trained with by default. Returns the registered version."""
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "instruction"), ColSpec("string", "input", required=False)]),
        outputs=Schema([ColSpec("string", "response")]),
        params=sampler_params(GenerateConfig(temperature=0.0, max_new_tokens=max_new_tokens)))
    return log_pyfunc(tracker, "instruction_model.py", model_dir, signature, registered_name,
                      pd.DataFrame([{"instruction": example["instruction"], "input": example["input"]}]))


def sampler_params(defaults: GenerateConfig):
    """The generate settings a served model takes as inference params (MODEL_PARAMS), with these defaults."""
    from mlflow.types.schema import ParamSchema, ParamSpec

    kinds = {"int": "long", "float": "double", "bool": "boolean"}
    return ParamSchema([ParamSpec(name, kinds[rule(GenerateConfig.__dataclass_fields__[name]).kind],
                                  getattr(defaults, name)) for name in MODEL_PARAMS])


def log_pyfunc(tracker: Tracker, python_model: str, model_dir, signature, registered_name: str | None,
               input_example) -> str | None:
    """A pyfunc logged from code (python_model, a file of gptcore.serving; the gptcore package is its code
    path), the model folder as its artifact (safetensors: loading it unpickles nothing)."""
    import mlflow

    served = Path(serving.__file__).resolve().parent
    with fluent_store(tracker.uri), mlflow.start_run(run_id=tracker.run_id), warnings.catch_warnings():
        # the signature is given: MLflow's advice to infer it from predict's type hints does not apply
        warnings.filterwarnings("ignore", message=".*type hints to the `predict` method")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(served / python_model), code_paths=[str(served.parent)],
            artifacts={"model": str(model_dir)}, signature=signature, input_example=input_example,
            pip_requirements=["torch", "tiktoken", "safetensors", "pandas", "mlflow"],
            registered_model_name=registered_name)
    share_logged_files(tracker.client.get_logged_model(info.model_id).artifact_location, model_dir)
    return None if info.registered_model_version is None else str(info.registered_model_version)


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


def share_logged_files(artifact_location: str, model_dir) -> None:
    """A model logged into a store on this file system holds hard links to the files of model_dir (which
    DVC's cache holds by hard link too, see .dvc/config), not copies: a run costs one copy of its model.
    An artifact store elsewhere (a tracking server, object storage) got a real upload and is left alone."""
    from mlflow.utils.file_utils import local_file_uri_to_path

    if artifact_location.startswith("file:"):
        link_identical_files(model_dir, local_file_uri_to_path(artifact_location))
