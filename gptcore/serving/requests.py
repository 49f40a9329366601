"""What the served models share: their input errors as MLflow's, which its scoring server answers with
HTTP 400."""

from __future__ import annotations

import contextlib

from ..errors import GptcoreError, renamed_keys


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
