"""A model from any source gptcore reads: OpenAI's weights by name, a gptcore model folder, LoRA adapters
beside a pointer to their base, a Hugging Face GPT-2 folder or the book's model.pth; and the model a
training run starts from, checked against the params' architecture."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, MissingInputError
from ..model.gpt import GPT, ModelConfig
from .adapters import ADAPTER_CONFIG, adapter_base_source, load_adapter
from .book import LfsFormatError, load_lfs
from .huggingface import OFFICIAL_MODELS, load_hf_folder, load_official
from .model_folder import CLASSIFIER_FILE, MODEL_CONFIG, WEIGHTS, load_model_folder


def load_model(source, *, drop_rate: float | None = None, n_heads: int | None = None,
               n_heads_key: str = "model.n_heads, or --n-heads") -> GPT:
    """OpenAI's weights by official name (gpt2 ... gpt2-xl, from the Hub), a model saved by save_model
    (folder), LoRA adapters saved beside a pointer to their base (folder), a Hugging Face GPT-2 folder
    (config.json + model.safetensors) or a file saved by the book's code (model.pth, see gptcore.formats.book).
    drop_rate replaces the saved one; n_heads is the head count of a book file, whose tensors do not
    hold it (a file of a GPT-2 size has GPT-2's, another is refused naming n_heads_key)."""
    if str(source) in OFFICIAL_MODELS:
        return load_official(str(source), drop_rate=drop_rate)
    source = Path(source)
    if source.is_file():
        return load_lfs(source, n_heads=n_heads, drop_rate=ModelConfig.drop_rate if drop_rate is None else drop_rate,
                        n_heads_key=n_heads_key)
    if (source / CLASSIFIER_FILE).is_file():
        raise ConfigError(f"{source} is a classifier ({CLASSIFIER_FILE}): its head scores classes, not tokens; "
                          "`gptcore classify` runs it, and a language model (a model folder, an official name) is "
                          "what this needs")
    if (source / ADAPTER_CONFIG).is_file() and not (source / WEIGHTS).is_file():
        model = adapter_base(source, drop_rate)
        load_adapter(model, source)
        return model
    if not (source / MODEL_CONFIG).is_file():
        if (source / "config.json").is_file():
            return load_hf_folder(source, drop_rate)
        raise MissingInputError(f"{source} holds no gptcore model ({MODEL_CONFIG} + {WEIGHTS}), no Hugging Face "
                                "GPT-2 folder (config.json + model.safetensors) and is no book file (model.pth)")
    return load_model_folder(source, drop_rate)


def adapter_base(folder, drop_rate: float | None = None) -> GPT:
    """The base model an adapter folder points at, checked against the checksum recorded with it."""
    source, n_heads = adapter_base_source(folder)
    return load_model(source, drop_rate=drop_rate, n_heads=n_heads)


ARCHITECTURE_FIELDS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias",
                       "tie_embeddings", "pos_embedding")


def initialize_model(config: ModelConfig, init_from: str = "scratch") -> GPT:
    """A model to train: random ('scratch', drawn as config.init says), OpenAI's weights by name, a
    gptcore / HF GPT-2 folder or a book file (model.pth, its head count taken from the params).

    The params' architecture must agree with the weights'; only drop_rate is taken from the params, and a
    shorter context_length keeps the first positions of the weights'.
    """
    if init_from == "scratch":
        return GPT(config)
    if init_from not in OFFICIAL_MODELS and not Path(init_from).exists():
        raise MissingInputError(f"model.init_from {init_from!r} is neither 'scratch', an official GPT-2 name "
                                f"({', '.join(OFFICIAL_MODELS)}), an existing model folder nor a book file "
                                "(model.pth)")
    try:
        model = load_model(init_from, drop_rate=config.drop_rate, n_heads=config.n_heads)
    except LfsFormatError as error:
        raise LfsFormatError(f"model.init_from: {error}") from None
    if config.context_length < model.config.context_length:
        model.crop_context(config.context_length)
    loaded = model.config.to_dict()
    for field in ARCHITECTURE_FIELDS:
        if loaded[field] != getattr(config, field):
            raise ConfigError(f"model.{field} is {getattr(config, field)!r} in params but {loaded[field]!r} in "
                             f"the weights of {init_from}; set model.{field}: {loaded[field]!r}")
    return model
