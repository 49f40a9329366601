"""Hugging Face GPT-2 interop: state dicts, HF-format folders and OpenAI's weights from the Hub.

HF's GPT2 uses Conv1D layers whose weights are stored (in_features, out_features), the transpose of
nn.Linear; every conversion here transposes exactly those four matrices per block.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..atomic import atomic_path, atomic_write_text
from ..errors import ConfigError, DownloadError, GptcoreError, MissingInputError
from ..model.gpt import GPT, ModelConfig, sinusoidal_table
from ..settings.model import EOT_ID

OFFICIAL_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


class HfFormatError(GptcoreError, ValueError):
    """A Hugging Face folder or state dict that is not a GPT-2 gptcore can hold."""


def config_from_hf(hf_config: dict) -> ModelConfig:
    """gptcore config from an HF GPT2Config dict (config.json)."""
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in TANH_GELUS:
        raise HfFormatError(f"HF config: activation_function {activation!r} is not supported; gptcore uses the "
                         f"tanh GELU ({' or '.join(TANH_GELUS)})")
    n_embd = hf_config["n_embd"]
    if hf_config.get("n_inner") not in (None, 4 * n_embd):
        raise HfFormatError(f"HF config: n_inner {hf_config['n_inner']} is not 4 * n_embd ({4 * n_embd})")
    return ModelConfig(
        vocab_size=hf_config["vocab_size"], context_length=hf_config["n_positions"], emb_dim=n_embd,
        n_heads=hf_config["n_head"], n_layers=hf_config["n_layer"],
        drop_rate=float(hf_config.get("resid_pdrop", 0.1)), qkv_bias=True,
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", True)), pos_embedding="learned")


def hf_config_from(config: ModelConfig) -> dict:
    """The config.json that transformers' GPT2LMHeadModel.from_pretrained reads."""
    return {
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
        "vocab_size": config.vocab_size, "n_positions": config.context_length, "n_ctx": config.context_length,
        "n_embd": config.emb_dim, "n_head": config.n_heads, "n_layer": config.n_layers, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        "resid_pdrop": config.drop_rate, "embd_pdrop": config.drop_rate, "attn_pdrop": config.drop_rate,
        "tie_word_embeddings": config.tie_embeddings, "bos_token_id": EOT_ID, "eos_token_id": EOT_ID,
        "torch_dtype": "float32",
    }


def load_hf_state_dict(model: GPT, hf_state: dict) -> GPT:
    """Copy an HF GPT2LMHeadModel (or GPT2Model) state dict into a gptcore model of the same shape."""
    own = model.state_dict()
    converted = {}
    for key, tensor in hf_state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):  # causal-mask buffers, not weights
            continue
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        if name.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        if name not in own:
            raise HfFormatError(f"HF weights: unexpected tensor {key!r} for this gptcore config")
        if tuple(tensor.shape) != tuple(own[name].shape):
            raise HfFormatError(f"HF weights: {key!r} has shape {tuple(tensor.shape)}, the gptcore config "
                             f"expects {tuple(own[name].shape)}")
        converted[name] = tensor
    if model.config.tie_embeddings:
        converted.pop("lm_head.weight", None)
    missing = [k for k in own if k not in converted and not (k == "lm_head.weight" and model.config.tie_embeddings)]
    if missing:
        raise HfFormatError(f"HF weights: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for name, tensor in converted.items():
            own[name].copy_(tensor)
    return model


def hf_state_dict_from(model: GPT) -> dict:
    """gptcore weights under HF names and layouts (Conv1D transposed; a bias for c_attn always)."""
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_embeddings:
            continue  # HF ties it to transformer.wte.weight on load
        state[name] = tensor.t().contiguous() if name.endswith(CONV1D_SUFFIXES) else tensor.contiguous()
    config = model.config
    if not config.qkv_bias:
        for i in range(config.n_layers):
            state[f"transformer.h.{i}.attn.c_attn.bias"] = torch.zeros(3 * config.emb_dim)
    if config.pos_embedding == "sinusoidal":  # HF only knows learned positions: export the fixed table
        state["transformer.wpe.weight"] = sinusoidal_table(config.context_length, config.emb_dim)
    return state


def export_hf(model: GPT, folder) -> Path:
    """Write config.json + model.safetensors that transformers.GPT2LMHeadModel.from_pretrained loads."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu() for k, v in hf_state_dict_from(model).items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    atomic_write_text(folder / "config.json", json.dumps(hf_config_from(model.config), indent=2))
    return folder


def load_hf_folder(folder, drop_rate: float | None = None) -> GPT:
    """A gptcore model from an HF GPT-2 folder (config.json + model.safetensors)."""
    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise MissingInputError(f"{path} not found: an HF GPT-2 folder holds config.json and "
                                    "model.safetensors (pytorch_model.bin is refused: it is a pickle)")
    hf_config = json.loads(config_path.read_text())
    if hf_config.get("model_type") != "gpt2":
        raise HfFormatError(f"{config_path}: model_type is {hf_config.get('model_type')!r}, expected 'gpt2'")
    config = config_from_hf(hf_config)
    if drop_rate is not None:
        config = replace(config, drop_rate=drop_rate)
    return load_hf_state_dict(GPT(config), load_file(str(weights_path)))


def load_official(name: str, drop_rate: float | None = None) -> GPT:
    """OpenAI's GPT-2 weights by name, downloaded (and cached) through huggingface_hub."""
    if name not in OFFICIAL_MODELS:
        raise ConfigError(f"unknown official GPT-2 model {name!r}; choose one of {OFFICIAL_MODELS}")
    from huggingface_hub import hf_hub_download

    try:
        paths = [hf_hub_download(f"openai-community/{name}", filename)
                 for filename in ("config.json", "model.safetensors")]
    except Exception as error:  # offline, DNS, proxy or Hub errors all end here
        raise DownloadError(
            f"cannot download {name!r} from the Hugging Face Hub ({type(error).__name__}: {error}). Connect "
            f"to the network, or on a machine that has it save the model (config.json + model.safetensors, "
            f"e.g. GPT2LMHeadModel.from_pretrained({name!r}).save_pretrained(folder)) and load that folder"
        ) from error
    return load_hf_folder(Path(paths[1]).parent, drop_rate)
