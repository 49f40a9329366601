"""Low-rank adapters, as the book's appendix E: y = x W^T + b + s * (x A) B, A Kaiming-uniform, B zeros.

Written here rather than taken from PEFT: the book's package builds one adapter per projection, so
gptcore's fused query/key/value layer (c_attn) takes three (the book's parameter count and numbers),
where PEFT would put one over the fused matrix; the book scales by alpha (PEFT by alpha / r) and draws
A as an (in, r) tensor, whose Kaiming fan-in is r (PEFT's (r, in) weight has fan-in `in`), so the same
seed gives PEFT other adapters than the book. Layers keep their names (c_attn.weight) and add
c_attn.lora_A (blocks, in, r) and c_attn.lora_B (blocks, r, out / blocks).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .atomic import atomic_path, atomic_write_text
from .errors import ConfigError
from .settings.lora import LoraConfig

ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter.safetensors", "adapter_config.json"
# each adapted layer of a block: (module path, its output blocks in order, the lora.layers names of them)
BLOCK_LAYERS = (("attn.c_attn", ("query", "key", "value")), ("attn.c_proj", ("attn_proj",)),
                ("mlp.c_fc", ("mlp_fc",)), ("mlp.c_proj", ("mlp_proj",)))


class LoRALinear(nn.Module):
    """A linear layer (its own weight and bias, shared with the layer it replaces) plus one adapter per
    enabled output block: the fused query/key/value projection has three blocks, the others one."""

    def __init__(self, linear: nn.Linear, blocks: int, enabled: tuple[bool, ...], rank: int, scale: float):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.blocks, self.enabled, self.scale = blocks, enabled, scale
        width = linear.out_features // blocks
        self.lora_A = nn.Parameter(torch.empty(sum(enabled), linear.in_features, rank, device=linear.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(sum(enabled), rank, width, device=linear.weight.device))
        with torch.no_grad():
            for adapter in self.lora_A:  # one (in, r) draw each, in output-block order, as the book's layers
                nn.init.kaiming_uniform_(adapter, a=math.sqrt(5))

    def delta(self, x):
        """s * (x A_i) B_i for each block, zeros where a block has no adapter: (..., out_features)."""
        adapters = iter(zip(self.lora_A, self.lora_B))
        parts = []
        for on in self.enabled:
            if on:
                a, b = next(adapters)
                parts.append(self.scale * ((x @ a) @ b))
            else:
                parts.append(x.new_zeros(*x.shape[:-1], self.out_features // self.blocks))
        return torch.cat(parts, dim=-1)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + self.delta(x)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain nn.Linear whose weight holds W + s * (A B)^T."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        eye = torch.eye(self.in_features, device=self.weight.device, dtype=self.weight.dtype)
        linear.weight.copy_(self.weight + self.delta(eye).T)
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear


def adapted_layers(model, layers) -> list[tuple[nn.Module, str, tuple[bool, ...]]]:
    """(parent module, attribute, enabled blocks) of every layer that gets adapters, in the book's order
    (per block: query, key, value, attention output, both feed-forward layers; then the head)."""
    chosen = []
    for block in model.transformer.h:
        for path, names in BLOCK_LAYERS:
            enabled = tuple(name in layers for name in names)
            if any(enabled):
                parent, attribute = block.get_submodule(path.rsplit(".", 1)[0]), path.rsplit(".", 1)[1]
                chosen.append((parent, attribute, enabled))
    if "head" in layers:
        chosen.append((model, "lm_head", (True,)))
    return chosen


def apply_lora(model, lora: LoraConfig, section: str = "lora") -> int:
    """Freeze every parameter, then add adapters to lora.layers (drawn from the global generator, in the
    book's order); returns the trainable parameter count."""
    if "head" in lora.layers and model.lm_head.weight is model.transformer.wte.weight:
        raise ConfigError(f"{section}.layers has head, but this model's head is its token embedding (tied): "
                          "an adapter there cannot be merged; drop head from the layers")
    for parameter in model.parameters():
        parameter.requires_grad = False
    scale = lora.alpha if lora.scaling == "alpha" else lora.alpha / lora.rank
    for parent, attribute, enabled in adapted_layers(model, lora.layers):
        setattr(parent, attribute, LoRALinear(getattr(parent, attribute), len(enabled), enabled, lora.rank, scale))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model) -> None:
    """Fold every adapter into its layer's weight, in place: a plain model again."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attribute, module.merged())


def has_lora(model) -> bool:
    return any(isinstance(module, LoRALinear) for module in model.modules())


def save_adapter(model, folder, lora: LoraConfig, base: str, base_sha256: str | None, extra: tuple[str, ...] = ()):
    """folder/adapter.safetensors (the adapters and the tensors named in extra, e.g. a new head) and
    adapter_config.json (the LoRA settings and the base model it applies to, with its checksum)."""
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()
             if ".lora_" in name or name.startswith(extra)}
    with atomic_path(Path(folder) / ADAPTER_WEIGHTS) as tmp:
        save_file(state, str(tmp))
    atomic_write_text(Path(folder) / ADAPTER_CONFIG, json.dumps(
        {"rank": lora.rank, "alpha": lora.alpha, "scaling": lora.scaling, "layers": list(lora.layers),
         "base": base, "base_sha256": base_sha256}, indent=2))


def adapter_config(folder) -> tuple[LoraConfig, dict]:
    saved = json.loads((Path(folder) / ADAPTER_CONFIG).read_text())
    return LoraConfig(rank=saved["rank"], alpha=saved["alpha"], scaling=saved["scaling"], layers=saved["layers"],
                      save="adapter"), saved


def adapter_base(folder, drop_rate: float | None = None):
    """The base model an adapter folder points at, checked against the checksum recorded with it."""
    from .checkpoint import WEIGHTS, load_model
    from .corpus import sha256_file

    _, saved = adapter_config(folder)
    weights = Path(saved["base"]) / WEIGHTS
    if saved["base_sha256"] and weights.is_file() and sha256_file(weights) != saved["base_sha256"]:
        raise ConfigError(f"{folder}'s adapter was trained on another {weights} (its sha256 differs); restore that "
                          "base model or fine-tune again")
    return load_model(saved["base"], drop_rate=drop_rate)


def save_trained(model, folder, lora: LoraConfig, base: str, extra: tuple[str, ...] = ()) -> None:
    """A trained model's weights in folder: its adapters merged (or none), or with lora.save adapter only
    the adapters (and the tensors named in extra) beside a pointer to the base, with the base's sha256."""
    from .checkpoint import WEIGHTS, save_model
    from .corpus import sha256_file

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
