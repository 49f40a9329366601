"""The book's files in and out: state dicts of LLMs-from-scratch's GPTModel (`model.pth`).

The book saves `torch.save(model.state_dict(), "model.pth")`, or in chapter 5 a dict holding
`model_state_dict` and `optimizer_state_dict`; its converted OpenAI weights (`gpt2-small-124M.pth`)
use the same keys. They are read with `torch.load(weights_only=True)`, which refuses any pickle that
carries code. The book keeps query, key and value as three layers (W_query, W_key, W_value); gptcore
fuses them into one c_attn whose row blocks are, in that order, the three weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import GptcoreError
from ..model.gpt import GPT, ModelConfig, sinusoidal_table
from ..settings.model import PRESETS

# no tensor's shape holds the head count: a file of one of GPT-2's four sizes (layers, width) has GPT-2's, any
# other must be told it
GPT2_HEADS = {(preset.n_layers, preset.emb_dim): preset.n_heads for name, preset in PRESETS.items()
              if name.startswith("gpt2")}
QKV = ("W_query", "W_key", "W_value")
# per block: the book's name -> gptcore's (after transformer.h.<i>.)
BLOCK_NAMES = {
    "att.out_proj.weight": "attn.c_proj.weight", "att.out_proj.bias": "attn.c_proj.bias",
    "ff.layers.0.weight": "mlp.c_fc.weight", "ff.layers.0.bias": "mlp.c_fc.bias",
    "ff.layers.2.weight": "mlp.c_proj.weight", "ff.layers.2.bias": "mlp.c_proj.bias",
    "norm1.scale": "ln_1.weight", "norm1.shift": "ln_1.bias", "norm2.scale": "ln_2.weight", "norm2.shift": "ln_2.bias",
}
TOP_NAMES = {"tok_emb.weight": "transformer.wte.weight", "pos_emb.weight": "transformer.wpe.weight",
             "final_norm.scale": "transformer.ln_f.weight", "final_norm.shift": "transformer.ln_f.bias",
             "out_head.weight": "lm_head.weight"}
BLOCK_KEY = re.compile(r"trf_blocks\.(\d+)\.(.+)")


class LfsFormatError(GptcoreError, ValueError):
    """A file that is not a state dict of the book's GPTModel."""


MODEL_SOURCES = ("a model folder (gptcore's or a Hugging Face GPT-2 one), an official name (gpt2 ... gpt2-xl) or "
                 "a state dict saved by the book's code (model.pth)")
PICKLED_CODE = re.compile(r"GLOBAL ([\w.]+)")  # how torch's weights_only unpickler names what it refused


def load_plain(path, error: type[GptcoreError], expected: str):
    """torch.load(weights_only=True): tensors and plain containers, never code. A refusal is one line
    saying what the file is not and what gptcore reads (`expected`), not PyTorch's paragraph."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as refused:
        code = PICKLED_CODE.search(str(refused))
        if code:
            raise error(f"refusing to load {path}: it pickles {code[1]}, which unpickling would run; gptcore "
                        f"reads only tensors and plain containers from a torch.save file") from None
        raise error(f"{path} is not a (complete) file saved by torch.save; gptcore reads {expected}") from None


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """The tensors of a book file: a bare state dict or chapter 5's {'model_state_dict': ...}."""
    path = Path(path)
    loaded = load_plain(path, LfsFormatError, MODEL_SOURCES)
    if isinstance(loaded, dict) and "model_state_dict" in loaded:
        loaded = loaded["model_state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise LfsFormatError(f"{path} holds no state dict of tensors (nor chapter 5's model_state_dict)")
    return loaded


def infer_config(state: dict[str, torch.Tensor], path, *, n_heads: int | None = None, drop_rate: float = 0.0,
                 n_heads_key: str = "model.n_heads, or --n-heads") -> ModelConfig:
    """Layers, width, context, vocabulary, qkv bias and tying from the tensors; the head count (not in
    any shape) from n_heads, else GPT-2's for a file of one of its sizes, else refused, naming n_heads_key."""
    for name in ("tok_emb.weight", "pos_emb.weight"):
        if name not in state:
            raise LfsFormatError(f"{path} has no tensor {name!r}: not a state dict of the book's GPTModel")
    vocab_size, emb_dim = state["tok_emb.weight"].shape
    blocks = {int(match.group(1)) for match in map(BLOCK_KEY.fullmatch, state) if match}
    if n_heads is None:
        n_heads = GPT2_HEADS.get((len(blocks), emb_dim))
        if n_heads is None:
            raise LfsFormatError(f"{path}: a book file does not hold its head count, and {len(blocks)} layers of width "
                                 f"{emb_dim} are none of GPT-2's sizes; give the head count ({n_heads_key})")
    out_head = state.get("out_head.weight")
    return ModelConfig(vocab_size=vocab_size, context_length=state["pos_emb.weight"].shape[0], emb_dim=emb_dim,
                       n_heads=n_heads, n_layers=len(blocks), drop_rate=drop_rate,
                       qkv_bias="trf_blocks.0.att.W_query.bias" in state,
                       tie_embeddings=out_head is None or torch.equal(out_head, state["tok_emb.weight"]))


def to_gptcore_names(state: dict[str, torch.Tensor], path) -> dict[str, torch.Tensor]:
    """The book's tensors under gptcore's names; a tensor that maps to nothing is an error naming it."""
    converted: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        if key in TOP_NAMES:
            converted[TOP_NAMES[key]] = tensor
            continue
        match = BLOCK_KEY.fullmatch(key)
        name = match.group(2) if match else ""
        prefix = f"transformer.h.{match.group(1)}." if match else ""
        if name == "att.mask":  # the causal mask buffer, rebuilt by the model
            continue
        if name in BLOCK_NAMES:
            converted[prefix + BLOCK_NAMES[name]] = tensor
        elif name.startswith("att.W_") and name.split(".")[1] in QKV:
            layer, kind = name.split(".")[1:]
            qkv.setdefault(f"{prefix}attn.c_attn.{kind}", {})[layer] = tensor
        else:
            raise LfsFormatError(f"{path}: tensor {key!r} does not map to a gptcore GPT parameter")
    for target, parts in qkv.items():
        missing = [layer for layer in QKV if layer not in parts]
        if missing:
            raise LfsFormatError(f"{path}: {target} needs {', '.join(QKV)}; {', '.join(missing)} missing")
        converted[target] = torch.cat([parts[layer] for layer in QKV])
    return converted


def load_lfs(path, *, n_heads: int | None = None, drop_rate: float = 0.0,
             n_heads_key: str = "model.n_heads, or --n-heads") -> GPT:
    """A gptcore model from a file saved by the book's code (config inferred from the tensors, the head count as
    infer_config takes it)."""
    state = read_state_dict(path)
    config = infer_config(state, path, n_heads=n_heads, drop_rate=drop_rate, n_heads_key=n_heads_key)
    model = GPT(config)
    converted = to_gptcore_names(state, path)
    if config.tie_embeddings:
        converted.setdefault("lm_head.weight", converted["transformer.wte.weight"])
    expected = model.state_dict()
    for name, tensor in converted.items():
        if expected[name].shape != tensor.shape:
            raise LfsFormatError(f"{path}: {name} has shape {tuple(tensor.shape)}; the inferred config ("
                                 f"{config.n_layers} layers, {config.emb_dim} wide) needs "
                                 f"{tuple(expected[name].shape)}")
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise LfsFormatError(f"{path}: no tensor for {', '.join(missing)}")
    model.load_state_dict(converted)
    return model


def lfs_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model in the layout the book's GPTModel(cfg).load_state_dict(...) accepts (strict)."""
    config, own = model.config, model.state_dict()
    emb, context = config.emb_dim, config.context_length
    state = {"tok_emb.weight": own["transformer.wte.weight"],
             "pos_emb.weight": own["transformer.wpe.weight"] if config.pos_embedding == "learned"
             else sinusoidal_table(context, emb)}  # the book learns positions: start it from the fixed table
    mask = torch.triu(torch.ones(context, context), diagonal=1)
    for i in range(config.n_layers):
        prefix, ours = f"trf_blocks.{i}.", f"transformer.h.{i}."
        for j, layer in enumerate(QKV):
            state[f"{prefix}att.{layer}.weight"] = own[f"{ours}attn.c_attn.weight"][j * emb:(j + 1) * emb]
            if config.qkv_bias:
                state[f"{prefix}att.{layer}.bias"] = own[f"{ours}attn.c_attn.bias"][j * emb:(j + 1) * emb]
        for book_name, name in BLOCK_NAMES.items():
            state[prefix + book_name] = own[ours + name]
        state[f"{prefix}att.mask"] = mask
    state["final_norm.scale"], state["final_norm.shift"] = own["transformer.ln_f.weight"], own["transformer.ln_f.bias"]
    state["out_head.weight"] = own["lm_head.weight"]
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def book_model(model: GPT, drop_rate: float = 0.0):
    """The book's own GPTModel (llms-from-scratch's ch04, installed with --no-deps) holding model's weights:
    the reference the parity tests and benchmarks compare with."""
    from llms_from_scratch.ch04 import GPTModel

    config = model.config
    reference = GPTModel({"vocab_size": config.vocab_size, "context_length": config.context_length,
                          "emb_dim": config.emb_dim, "n_heads": config.n_heads, "n_layers": config.n_layers,
                          "drop_rate": drop_rate, "qkv_bias": config.qkv_bias})
    reference.load_state_dict(lfs_state_dict(model))
    return reference


def export_lfs(model: GPT, path) -> Path:
    """Write model.pth for the book's notebooks (`model.load_state_dict(torch.load(path))`), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(lfs_state_dict(model), tmp)
    return path
