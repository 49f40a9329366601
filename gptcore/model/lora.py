"""Low-rank adapters, as the book's appendix E: y = x W^T + b + s * (x A) B, A Kaiming-uniform, B zeros.

Written here rather than taken from PEFT: the book's package builds one adapter per projection, so
gptcore's fused query/key/value layer (c_attn) takes three (the book's parameter count and numbers),
where PEFT would put one over the fused matrix; the book scales by alpha (PEFT by alpha / r) and draws
A as an (in, r) tensor, whose Kaiming fan-in is r (PEFT's (r, in) weight has fan-in `in`), so the same
seed gives PEFT other adapters than the book. Layers keep their names (c_attn.weight) and add
c_attn.lora_A (blocks, in, r) and c_attn.lora_B (blocks, r, out / blocks).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..settings.lora import LoraConfig

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
