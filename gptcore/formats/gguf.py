"""llama.cpp's GGUF of a GPT-2 (llama.cpp, Ollama, LM Studio run it), written from a Hugging Face folder that
gptcore exported (gptcore.formats.huggingface) with llama.cpp's own Python package `gguf`: its GPT-2 tensor
names (TensorNameMap), its readers of the vocabulary, merges, special tokens and chat template (BpeVocab,
SpecialVocab), its writer and its quantizer, and its converter's choices of which tensors stay float32.

Not convert_hf_to_gguf.py, the converter itself: it is a script of llama.cpp's repository (PyPI's
llama-cpp-python ships it in its source only), with its own copy of `gguf` and a check of the pre-tokenizer
that downloads reference tokenizers; the package is on PyPI and holds every piece the converter uses here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from ..atomic import atomic_path
from ..errors import ConfigError
from ..model.tokenizer import EOT_TOKEN
from ..settings.model import VOCAB_SIZE
from .huggingface import CONV1D_SUFFIXES


def check_vocabulary(vocab_size: int) -> None:
    if vocab_size != VOCAB_SIZE:
        raise ConfigError(f"the model's vocabulary has {vocab_size:,} tokens, not GPT-2's {VOCAB_SIZE:,}: a GGUF "
                          "embeds GPT-2's tokenizer, which would not name its tokens; export it as a Hugging Face "
                          "folder instead (gptcore export-hf)")


def write_gguf(hf_folder, out, weights: str = "f32", name: str = "gptcore") -> Path:
    """The GGUF of an exported Hugging Face GPT-2 folder (a language model; an instruction model keeps its
    chat template), its 2-D weights as `weights` (one of settings.export.GGUF_TYPES, checked by the caller), written atomically."""
    import gguf

    folder = Path(hf_folder)
    config = json.loads((folder / "config.json").read_text())
    check_vocabulary(config["vocab_size"])
    quantization = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
                    "q8_0": gguf.GGMLQuantizationType.Q8_0}[weights]
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[weights]
    arch = gguf.MODEL_ARCH.GPT2
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
        writer.add_name(name)
        writer.add_context_length(config["n_positions"])
        writer.add_embedding_length(config["n_embd"])
        writer.add_feed_forward_length(config.get("n_inner") or 4 * config["n_embd"])
        writer.add_block_count(config["n_layer"])
        writer.add_head_count(config["n_head"])
        writer.add_layer_norm_eps(config["layer_norm_epsilon"])
        writer.add_file_type(file_type)
        add_tokenizer(writer, folder)
        names = gguf.get_tensor_name_map(arch, config["n_layer"])
        for hf_name, tensor in load_file(str(folder / "model.safetensors")).items():
            if hf_name.endswith(CONV1D_SUFFIXES):  # Conv1D (in, out) back to llama.cpp's (out, in)
                tensor = np.ascontiguousarray(tensor.T)
            gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
            data, kind = quantized(gguf_name, tensor, quantization)
            writer.add_tensor(gguf_name, data, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(out)


def quantized(name: str, tensor: np.ndarray, quantization):
    """(data, type) as llama.cpp's converter stores a tensor: biases, norms, 1-D tensors and the position
    table in float32, other weights in the chosen type (float16 where a row does not fill q8_0's blocks)."""
    import gguf

    if tensor.ndim <= 1 or not name.endswith(".weight") or name.endswith("_norm.weight") or \
            name.startswith(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD]):
        quantization = gguf.GGMLQuantizationType.F32
    try:
        return gguf.quants.quantize(tensor.astype(np.float32), quantization), quantization
    except gguf.QuantError:
        return gguf.quants.quantize(tensor.astype(np.float32), gguf.GGMLQuantizationType.F16), \
            gguf.GGMLQuantizationType.F16


def add_tokenizer(writer, folder: Path) -> None:
    """GPT-2's byte-level BPE as llama.cpp reads it: the tokens in id order (<|endoftext|> a control token,
    so it is never split and ends a generation), the merges, the special ids, no BOS added, and the chat
    template of an instruction model."""
    import gguf

    vocab = gguf.vocab.BpeVocab(folder)
    tokens = [token for token, _, _ in vocab.all_tokens()]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL if token == EOT_TOKEN else gguf.TokenType.NORMAL
                            for token in tokens])
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)


def ollama_modelfile(gguf_name: str, context_length: int, generation: dict,
                     template: tuple[str, str, str] | None) -> str:
    """An Ollama Modelfile beside the GGUF: the file, the instruction template in Ollama's template syntax
    (the prompt is the instruction; Ollama has no input field), end-of-text as the stop, the sampler, and the
    context the model learned positions for (llama.cpp aborts a GPT-2 that generates past it)."""
    lines = [f"FROM ./{gguf_name}", ""]
    if template:
        prompt, _, response = template
        text = (prompt + response).replace("{{", '{{ "{{" }}')
        lines += ['TEMPLATE """' + text.replace("{instruction}", "{{ .Prompt }}") + '"""', ""]
    lines.append(f'PARAMETER stop "{EOT_TOKEN}"')
    lines.append(f"PARAMETER num_ctx {context_length}")
    lines.append(f"PARAMETER num_predict {generation['max_new_tokens']}")
    if generation.get("do_sample"):
        lines += [f"PARAMETER temperature {generation['temperature']}", f"PARAMETER top_k {generation['top_k']}",
                  f"PARAMETER top_p {generation['top_p']}"]
    else:
        lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"

