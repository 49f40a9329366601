"""Saving and loading models and resumable training checkpoints, without ever unpickling objects.

A model folder holds model.safetensors + model_config.json. A training checkpoint is a folder
step-NNNNNNN/ with the weights (safetensors), the trainer state (optimizer, schedule position, RNG
states, data position, history; read with torch.load(weights_only=True)) and a manifest of sha256
checksums. It is written under a temporary name and renamed whole, then the `latest` pointer file is
replaced atomically, so a crash at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model as load_safetensors_into, save_model as save_safetensors

from .atomic import atomic_path, atomic_write_text, fsync_directory
from .corpus import sha256_file
from .errors import ConfigError, GptcoreError, MissingInputError
from .model import GPT, ModelConfig

WEIGHTS, MODEL_CONFIG, STATE, MANIFEST, LATEST = (
    "model.safetensors", "model_config.json", "trainer_state.pt", "manifest.json", "latest")
# what makes a model folder a classifier's (gptcore.classifier): its labels and how it reads a text
CLASSIFIER_FILE = "classifier.json"


class CheckpointError(GptcoreError):
    """A checkpoint that exists but cannot be trusted (truncated, corrupted, mismatched)."""


def save_model(model: GPT, folder) -> Path:
    """The final model: weights + config, each written atomically."""
    folder = Path(folder)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_safetensors(model, str(tmp))
    atomic_write_text(folder / MODEL_CONFIG, json.dumps(model.config.to_dict(), indent=2))
    return folder


def load_model(source, *, drop_rate: float | None = None, n_heads: int | None = None) -> GPT:
    """OpenAI's weights by official name (gpt2 ... gpt2-xl, from the Hub), a model saved by save_model
    (folder), LoRA adapters saved beside a pointer to their base (folder), a Hugging Face GPT-2 folder
    (config.json + model.safetensors) or a file saved by the book's code (model.pth, see gptcore.lfs).
    drop_rate replaces the saved one; n_heads is the head count of a book file, whose tensors do not
    hold it."""
    from .hf import OFFICIAL_MODELS, load_official

    if str(source) in OFFICIAL_MODELS:
        return load_official(str(source), drop_rate=drop_rate)
    source = Path(source)
    if source.is_file():
        from .lfs import load_lfs

        return load_lfs(source, n_heads=n_heads, drop_rate=ModelConfig.drop_rate if drop_rate is None else drop_rate)
    from .lora import ADAPTER_CONFIG

    if (source / CLASSIFIER_FILE).is_file():
        raise ConfigError(f"{source} is a classifier ({CLASSIFIER_FILE}): its head scores classes, not tokens; "
                          "`gptcore classify` runs it, and a language model (a model folder, an official name) is "
                          "what this needs")
    if (source / ADAPTER_CONFIG).is_file() and not (source / WEIGHTS).is_file():
        from .lora import adapter_base, load_adapter

        model = adapter_base(source, drop_rate)
        load_adapter(model, source)
        return model
    if not (source / MODEL_CONFIG).is_file():
        if (source / "config.json").is_file():
            from .hf import load_hf_folder

            return load_hf_folder(source, drop_rate)
        raise MissingInputError(f"{source} holds no gptcore model ({MODEL_CONFIG} + {WEIGHTS}), no Hugging Face "
                                "GPT-2 folder (config.json + model.safetensors) and is no book file (model.pth)")
    saved = json.loads((source / MODEL_CONFIG).read_text())
    model = GPT(ModelConfig(**{**saved, **({} if drop_rate is None else {"drop_rate": drop_rate})}))
    try:
        load_safetensors_into(model, str(source / WEIGHTS))
    except Exception as error:  # header/shape errors from safetensors
        raise CheckpointError(f"cannot load weights {source / WEIGHTS}: {error}") from error
    return model


def rng_states() -> dict:
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory, model: GPT, trainer_state: dict, keep: int = 2) -> Path:
    """Write checkpoint step-<step>/ and point `latest` at it; keeps the newest `keep` checkpoints."""
    directory = Path(directory)
    final = directory / f"step-{trainer_state['step']:07d}"
    for leftover in directory.glob(".step-*.tmp-*"):  # from a process killed while writing
        shutil.rmtree(leftover, ignore_errors=True)
    staging = directory / f".{final.name}.tmp-{os.getpid()}"
    staging.mkdir(parents=True)
    try:
        save_safetensors(model, str(staging / WEIGHTS))
        torch.save(trainer_state, staging / STATE)
        (staging / MODEL_CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2))
        manifest = {name: sha256_file(staging / name) for name in (WEIGHTS, STATE, MODEL_CONFIG)}
        (staging / MANIFEST).write_text(json.dumps({"step": trainer_state["step"], "sha256": manifest}))
        for path in staging.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        fsync_directory(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_text(directory / LATEST, final.name)
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory) -> Path | None:
    """The checkpoint folder `latest` points at, or None when there is no checkpoint."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(directory) / pointer.read_text().strip()
    if not folder.is_dir():
        raise CheckpointError(f"{pointer} points at {folder}, which is missing; delete {directory} to "
                              "start over")
    return folder


def verify_checkpoint(folder: Path) -> None:
    manifest_path = folder / MANIFEST
    try:
        expected = json.loads(manifest_path.read_text())["sha256"]
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {folder} has no readable {MANIFEST} ({error}); it is incomplete "
                              f"or corrupted: delete it to start over") from error
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            raise CheckpointError(f"checkpoint file {path} is missing, truncated or corrupted (sha256 differs "
                                  f"from {manifest_path}); delete the checkpoint folder to start over")


def load_checkpoint(folder, model: GPT) -> dict:
    """Verify checksums, load weights into model, return the trainer state (tensors and plain data only)."""
    folder = Path(folder)
    verify_checkpoint(folder)
    saved_config = json.loads((folder / MODEL_CONFIG).read_text())
    if saved_config != model.config.to_dict():
        changed = {k: (saved_config.get(k), v) for k, v in model.config.to_dict().items()
                   if saved_config.get(k) != v}
        raise CheckpointError(f"checkpoint {folder} was made with another model config (saved, now): "
                              f"{changed}; restore those params or delete the checkpoint to start over")
    load_safetensors_into(model, str(folder / WEIGHTS))
    from .lfs import load_plain

    return load_plain(folder / STATE, CheckpointError, "a resume checkpoint's trainer state here")


ARCHITECTURE_FIELDS = ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "qkv_bias",
                       "tie_embeddings", "pos_embedding")


def initialize_model(config: ModelConfig, init_from: str = "scratch") -> GPT:
    """A model to train: random ('scratch', drawn as config.init says), OpenAI's weights by name, a
    gptcore / HF GPT-2 folder or a book file (model.pth, its head count taken from the params).

    The params' architecture must agree with the weights'; only drop_rate is taken from the params, and a
    shorter context_length keeps the first positions of the weights'.
    """
    from .hf import OFFICIAL_MODELS

    if init_from == "scratch":
        return GPT(config)
    if init_from not in OFFICIAL_MODELS and not Path(init_from).exists():
        raise MissingInputError(f"model.init_from {init_from!r} is neither 'scratch', an official GPT-2 name "
                                f"({', '.join(OFFICIAL_MODELS)}), an existing model folder nor a book file "
                                "(model.pth)")
    from .lfs import LfsFormatError

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
