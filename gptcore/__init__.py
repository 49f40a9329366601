"""gptcore: GPT-2 models trained and sampled reproducibly.

The names below load on first use, so that `import gptcore.corpus` (the prepare stage) does not import
torch.
"""

import importlib

_EXPORTS = {"GPT": "model", "KVCache": "model", "ModelConfig": "settings.model", "PRESETS": "settings.model",
            "Tokenizer": "tokenizer", "generate": "sampling"}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gptcore' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
