"""The weights a model decodes with (params.yaml `generate.weights`, `gptcore generate --weights`).

Decoding one token reads every weight once, so at batch 1 it is bound by memory bandwidth, not by
arithmetic: fewer bytes per weight is more tokens per second. int8 is weight-only quantization, one
scale per output channel (symmetric, round to nearest), run by PyTorch's own int8 x bf16 kernel
(`torch._weight_int8pack_mm`, the CPU kernel torchao lowers to): a quarter of fp32's bytes.
Activations, LayerNorms, embeddings and the KV cache are bf16 then. Measured against fp32 greedy
decoding in docs/benchmarks.md; the tests state the bounds.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from ..settings.generate import INFERENCE_WEIGHTS
from .gpt import GPT
from .runtime import fast_bf16
from .sampling import generate


def weights_on(device: torch.device) -> list[str]:
    """The inference weights (other than auto) that decode on device: int8 is a CPU kernel."""
    return [weights for weights in INFERENCE_WEIGHTS
            if weights != "auto" and (weights != "int8" or device.type == "cpu")]


def resolve_weights(weights: str, device: torch.device) -> str:
    """'auto': int8 on the CPU (the fastest measured there), bf16 on a GPU that has it (half the memory;
    for 124M on an H100 fp32 decoded faster: docs/benchmarks.md), else fp32."""
    if weights not in INFERENCE_WEIGHTS:
        raise ConfigError(f"generate.weights = {weights!r} is invalid; use one of {', '.join(INFERENCE_WEIGHTS)}")
    if weights == "auto":
        if device.type == "cpu":
            return "int8"
        return "bf16" if fast_bf16(device) else "fp32"
    if weights not in weights_on(device):
        raise ConfigError(f"generate.weights = {weights} runs on the CPU only (PyTorch's int8 weight-only kernel); "
                          f"on {device.type} use bf16 or auto")
    return weights


class Int8Linear(nn.Module):
    """nn.Linear with int8 weights, one bf16 scale per output channel: w ~ weight_int8 * scale, each
    weight within scale / 2 of the original (scale = max |row| / 127)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach().float()
        # the kernel multiplies by the bf16 scale, so quantize with that same rounded scale
        scale = (weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.bfloat16).tiny) / 127).to(torch.bfloat16)
        self.register_buffer("weight", (weight / scale.float()[:, None]).round().clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16))

    def forward(self, x):
        y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous(),
                                      self.weight, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], y.shape[-1])

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scale.float()[:, None]


def quantize_int8(model: GPT) -> GPT:
    """model, in place, with its Linear layers (the blocks' and the output head) as Int8Linear made
    from their fp32 weights, everything else bf16; a tied head is quantized on its own, the embedding it
    shares weights with stays bf16."""
    model.to(torch.float32)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, name, Int8Linear(child))
    return model.to(torch.bfloat16)


def prepare_for_inference(model: GPT, weights: str, device: torch.device) -> GPT:
    """model (converted in place) in eval mode on device, with the weights `weights` resolves to there."""
    resolved = resolve_weights(weights, device)
    if resolved == "int8":
        return quantize_int8(model).to(device).eval()
    return model.to(device, torch.bfloat16 if resolved == "bf16" else torch.float32).eval()


@torch.no_grad()
def next_token_agreement(reference: GPT, candidate: GPT, tokens: torch.Tensor, batch_size: int = 8) -> dict:
    """Teacher-forced over the non-overlapping context windows of tokens (1-D): the share of positions at
    which both models rank the same next token first, and each model's mean cross-entropy there."""
    context = reference.config.context_length
    windows = tokens[: (len(tokens) - 1) // context * context + 1].long()
    inputs, targets = windows[:-1].view(-1, context), windows[1:].view(-1, context)
    agree, losses = 0, {"reference": 0.0, "candidate": 0.0}
    for start in range(0, len(inputs), batch_size):
        batch, target = inputs[start:start + batch_size], targets[start:start + batch_size]
        logits = {name: net(batch)[0].float() for name, net in (("reference", reference), ("candidate", candidate))}
        agree += int((logits["reference"].argmax(-1) == logits["candidate"].argmax(-1)).sum())
        for name, value in logits.items():
            losses[name] += F.cross_entropy(value.flatten(0, 1), target.flatten(), reduction="sum").item()
    positions = inputs.numel()
    return {"positions": positions, "top1_agreement": agree / positions,
            "reference_loss": losses["reference"] / positions, "candidate_loss": losses["candidate"] / positions}


def greedy_agreement(reference: GPT, candidate: GPT, prompts: list[torch.Tensor], new_tokens: int) -> list[int]:
    """Per prompt (1-D token ids), how many of the candidate's greedy tokens equal the reference's before
    the first that differs (new_tokens if none does)."""
    agreed = []
    for prompt in prompts:
        expected, got = (generate(net, prompt[None], new_tokens)[0, len(prompt):] for net in (reference, candidate))
        differs = (expected != got).nonzero()
        agreed.append(int(differs[0]) if len(differs) else new_tokens)
    return agreed
