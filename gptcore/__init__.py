"""gptcore: GPT-2 models trained, fine-tuned, evaluated and served reproducibly.

The front door: `from gptcore import GPT, Trainer, ...` gives the model, its config and tokenizer, text
generation, the training loop, the model loader and the tasks. The names load on first use, so that
`import gptcore.data.corpus` (the prepare stage) does not import torch. The packages and the order their
imports run in: docs/design.md.
"""

import importlib

_EXPORTS = {"GPT": "model.gpt", "KVCache": "model.gpt", "ModelConfig": "settings.model", "PRESETS": "settings.model",
            "Tokenizer": "model.tokenizer", "generate": "model.sampling", "load_model": "formats.loading",
            "Trainer": "training.trainer", "Task": "training.task", "LanguageModeling": "tasks.language_modeling",
            "Classification": "tasks.classification", "InstructionTuning": "tasks.instruction_tuning"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gptcore' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
