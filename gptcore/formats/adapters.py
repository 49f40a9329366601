"""LoRA adapters on disk (gptcore.model.lora holds the layers): adapter.safetensors (the adapters and any
new tensor, e.g. a classifier's head) beside adapter_config.json (the LoRA settings, the base model they
apply to and its sha256), so a fine-tuned model costs its adapters, not another copy of the base."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file

from ..atomic import atomic_path, atomic_write_text
from ..data.corpus import sha256_file
from ..errors import ConfigError
from ..model.lora import apply_lora, has_lora, merge_lora
from ..settings.lora import LoraConfig
from .model_folder import WEIGHTS, save_model

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter_config.json"


def save_adapter(model, folder, lora: LoraConfig, base: str, base_sha256: str | None, extra: tuple[str, ...] = ()):
    """folder/adapter.safetensors (the adapters and the tensors named in extra, e.g. a new head) and
    adapter_config.json (the LoRA settings and the base model it applies to, with its checksum and head count:
    a book file does not hold it)."""
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()
             if ".lora_" in name or name.startswith(extra)}
    with atomic_path(Path(folder) / ADAPTER_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    atomic_write_text(Path(folder) / ADAPTER_CONFIG, json.dumps(
        {"rank": lora.rank, "alpha": lora.alpha, "scaling": lora.scaling, "layers": list(lora.layers),
         "base": base, "base_sha256": base_sha256, "base_n_heads": model.config.n_heads}, indent=2))


def adapter_config(folder) -> tuple[LoraConfig, dict]:
    saved = json.loads((Path(folder) / ADAPTER_CONFIG).read_text())
    return LoraConfig(rank=saved["rank"], alpha=saved["alpha"], scaling=saved["scaling"], layers=saved["layers"],
                      save="adapter"), saved


def adapter_base_source(folder) -> tuple[str, int | None]:
    """Where the base model an adapter folder points at is (any source gptcore.formats.loading reads), checked
    against the checksum recorded with it, and its head count (None from adapters saved before it was kept)."""
    _, saved = adapter_config(folder)
    weights = Path(saved["base"]) / WEIGHTS
    if saved["base_sha256"] and weights.is_file() and sha256_file(weights) != saved["base_sha256"]:
        raise ConfigError(f"{folder}'s adapter was trained on another {weights} (its sha256 differs); restore that "
                          "base model or fine-tune again")
    return saved["base"], saved.get("base_n_heads")


def save_trained(model, folder, lora: LoraConfig, base: str, extra: tuple[str, ...] = ()) -> None:
    """A trained model's weights in folder: its adapters merged (or none), or with lora.save adapter only
    the adapters (and the tensors named in extra) beside a pointer to the base, with the base's sha256."""
    if has_lora(model) and lora.save == "adapter":
        located = Path(base).resolve() if Path(base).exists() else None
        save_adapter(model, folder, lora, str(located or base),
                     sha256_file(located / WEIGHTS) if located and (located / WEIGHTS).is_file() else None, extra)
        return
    merge_lora(model)
    save_model(model, folder)


def load_adapter(model, folder) -> None:
    """Add the adapters of folder's adapter_config.json to model and load adapter.safetensors into it."""
    lora, _ = adapter_config(folder)
    apply_lora(model, lora)
    state = load_file(str(Path(folder) / ADAPTER_WEIGHTS))
    missing = [name for name in state if name not in model.state_dict()]
    if missing:
        raise ConfigError(f"{Path(folder) / ADAPTER_WEIGHTS} holds tensors this model lacks: {missing[:3]}")
    model.load_state_dict(state, strict=False)
