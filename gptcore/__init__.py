"""gptcore: GPT-2 models trained and sampled reproducibly."""

from .model import GPT, PRESETS, KVCache, ModelConfig
from .sampling import generate
from .tokenizer import Tokenizer

__all__ = ["GPT", "PRESETS", "KVCache", "ModelConfig", "Tokenizer", "generate"]
