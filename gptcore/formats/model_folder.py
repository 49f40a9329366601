"""gptcore's own model folder: model.safetensors (the weights, safetensors: reading them unpickles nothing)
and model_config.json (the architecture). A fine-tuned model adds a file that says what it is: the
classifier's classifier.json (gptcore.tasks.classification), the instruction model's instruct.json; a LoRA
model saved as adapters holds adapter files and a pointer to its base instead of the weights
(gptcore.formats.adapters).
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_model as load_safetensors_into, save_model as save_safetensors

from ..atomic import atomic_path, atomic_write_text
from ..errors import GptcoreError
from ..model.gpt import GPT, ModelConfig

WEIGHTS, MODEL_CONFIG = "model.safetensors", "model_config.json"
# what makes a model folder a classifier's (gptcore.tasks.classification): its labels and how it reads a text
CLASSIFIER_FILE = "classifier.json"


class CheckpointError(GptcoreError):
    """Saved weights that exist but cannot be trusted (truncated, corrupted, mismatched)."""


def save_model(model: GPT, folder) -> Path:
    """The final model: weights + config, each written atomically."""
    folder = Path(folder)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_safetensors(model, str(tmp))
    atomic_write_text(folder / MODEL_CONFIG, json.dumps(model.config.to_dict(), indent=2))
    return folder


def load_model_folder(folder, drop_rate: float | None = None) -> GPT:
    """The model a save_model folder holds; drop_rate replaces the saved one."""
    folder = Path(folder)
    saved = json.loads((folder / MODEL_CONFIG).read_text())
    model = GPT(ModelConfig(**{**saved, **({} if drop_rate is None else {"drop_rate": drop_rate})}))
    try:
        load_safetensors_into(model, str(folder / WEIGHTS))
    except Exception as error:  # header/shape errors from safetensors
        raise CheckpointError(f"cannot load weights {folder / WEIGHTS}: {error}") from error
    return model
