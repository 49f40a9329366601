"""A complete Hugging Face folder of any model gptcore makes: transformers' from_pretrained and pipeline() load
it offline with nothing else. Beside the weights and config (gptcore.formats.huggingface): GPT-2's tokenizer
files, generation_config.json, an instruction model's template as the chat template, a classifier as
GPT2ForSequenceClassification, and a model card.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_path, atomic_write_text
from ..errors import DownloadError
from ..model.gpt import GPT, ModelConfig
from ..model.tokenizer import EOT_TOKEN, OFFLINE_HELP, Tokenizer, use_mirror_for_tiktoken
from ..settings.model import EOT_ID
from .huggingface import HfFormatError, export_hf, hf_config_from, hf_state_dict_from

# where tiktoken downloads GPT-2's BPE files from; its cache names each file by the sha1 of its URL
BPE_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/"


def bpe_files() -> tuple[Path, Path]:
    """(encoder.json, vocab.bpe): GPT-2's vocabulary and merges in tiktoken's cache, the files Hugging Face
    names vocab.json and merges.txt."""
    use_mirror_for_tiktoken()
    Tokenizer()  # downloads them into the cache where they are not there yet
    cache = Path(os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
                 or Path(tempfile.gettempdir()) / "data-gym-cache")
    paths = tuple(cache / hashlib.sha1(f"{BPE_URL}{name}".encode()).hexdigest() for name in ("encoder.json",
                                                                                            "vocab.bpe"))
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise DownloadError(f"GPT-2's BPE files are not in tiktoken's cache ({', '.join(missing)}); {OFFLINE_HELP}")
    return paths


@dataclass(frozen=True)
class ClassifierHead:
    """What a classifier's folder says beyond its weights: its labels in class order, the id that pads a
    text (Hugging Face reads the last token that is not it) and the tokens a text is cut to."""
    labels: tuple[str, ...]
    pad_id: int
    max_length: int


def fold_head_bias(model: GPT) -> torch.Tensor:
    """The final LayerNorm's bias β' with W β' = W β + b: the class head's bias b moved into the LayerNorm,
    which in a classifier feeds only the head (Hugging Face's `score` layer has no bias). Exact where the
    head's rows are independent (fewer classes than the width, as always), else refused."""
    weight, bias = model.lm_head.weight.detach().double(), model.lm_head.bias.detach().double()
    shift = torch.linalg.pinv(weight) @ bias
    if (weight @ shift - bias).abs().max() > 1e-6 * (1 + bias.abs().max()):
        raise HfFormatError("the classifier's head has linearly dependent rows, so Hugging Face's score layer "
                            "(no bias) cannot hold its bias; this classifier cannot be exported")
    return (model.transformer.ln_f.bias.detach().double() + shift).float()


def classifier_state_dict(model: GPT) -> dict:
    """A classifier's weights as GPT2ForSequenceClassification names them: the head is `score`, its bias
    folded into ln_f's."""
    state = {name: tensor for name, tensor in hf_state_dict_from(model).items() if not name.startswith("lm_head.")}
    state["transformer.ln_f.bias"] = fold_head_bias(model)
    state["score.weight"] = model.lm_head.weight.detach()
    return state


def classifier_config(config: ModelConfig, head: ClassifierHead) -> dict:
    return {**hf_config_from(config), "architectures": ["GPT2ForSequenceClassification"],
            "id2label": dict(enumerate(head.labels)), "label2id": {label: i for i, label in enumerate(head.labels)},
            "pad_token_id": head.pad_id, "tie_word_embeddings": False}


def write_classifier(folder: Path, model: GPT, head: ClassifierHead) -> None:
    """GPT2ForSequenceClassification's model.safetensors and config.json."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file({k: v.detach().float().cpu().contiguous() for k, v in classifier_state_dict(model).items()},
                  str(tmp), metadata={"format": "pt"})
    atomic_write_text(folder / "config.json", json.dumps(classifier_config(model.config, head), indent=2) + "\n")


def generation_config(*, max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> dict:
    """generation_config.json: stop at <|endoftext|>, and gptcore's sampler settings in transformers' names
    (temperature 0 is greedy; a setting that is off is transformers' value for off)."""
    sampling = ({"do_sample": True, "temperature": temperature, "top_k": top_k or 0, "top_p": top_p or 1.0}
                if temperature > 0 else {"do_sample": False})
    return {"bos_token_id": EOT_ID, "eos_token_id": EOT_ID, "pad_token_id": EOT_ID, "max_new_tokens": max_new_tokens,
            **sampling}


def jinja_text(text: str) -> str:
    """text as a Jinja expression that prints it as it is (braces and all)."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}"


def chat_template(prompt: str, input_section: str, response: str) -> str:
    """An instruction template as a chat template: the last `user` message is the instruction, an `input`
    message (optional) the input, and the generation prompt is the response marker; apply_chat_template
    then gives the prompt gptcore formats (gptcore.tasks.instruction_tuning.Template)."""
    def filled(part: str, placeholder: str, value: str) -> str:
        return f"{{{{ {value} }}}}".join(jinja_text(piece) for piece in part.split(placeholder))

    return ("{%- set ns = namespace(instruction='', input='') -%}\n"
            "{%- for message in messages -%}\n"
            "{%- if message['role'] == 'user' %}{% set ns.instruction = message['content'] %}"
            "{% elif message['role'] == 'input' %}{% set ns.input = message['content'] %}{% endif -%}\n"
            "{%- endfor -%}\n"
            + filled(prompt, "{instruction}", "ns.instruction")
            + "{% if ns.input %}" + filled(input_section, "{input}", "ns.input") + "{% endif %}"
            + "{% if add_generation_prompt %}" + jinja_text(response) + "{% endif %}")


def write_tokenizer(folder: Path, *, max_length: int, pad_id: int | None = None,
                    chat_template: str | None = None) -> None:
    """GPT-2's tokenizer as Hugging Face keeps it: vocab.json and merges.txt (tiktoken's files of it, as
    they are), tokenizer.json (built by `tokenizers` from them) and tokenizer_config.json."""
    from tokenizers import ByteLevelBPETokenizer

    vocab, merges = bpe_files()
    pad_token = None if pad_id is None else {i: token for token, i in json.loads(vocab.read_text()).items()}[pad_id]
    for source, name in ((vocab, "vocab.json"), (merges, "merges.txt")):
        with atomic_path(folder / name) as tmp:
            shutil.copyfile(source, tmp)
    tokenizer = ByteLevelBPETokenizer(str(vocab), str(merges))
    tokenizer.add_special_tokens([EOT_TOKEN])  # in the vocabulary at 50256; special: never split, as tiktoken
    with atomic_path(folder / "tokenizer.json") as tmp:
        tokenizer.save(str(tmp))
    config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": max_length, "bos_token": EOT_TOKEN,
              "eos_token": EOT_TOKEN, "unk_token": EOT_TOKEN, "pad_token": pad_token, "add_prefix_space": False,
              "add_bos_token": False, "clean_up_tokenization_spaces": False, "errors": "replace"}
    if chat_template is not None:
        config["chat_template"] = chat_template
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def export_folder(model: GPT, folder, *, generation: dict | None = None,
                  template: tuple[str, str, str] | None = None, classifier: ClassifierHead | None = None,
                  card: str = "") -> Path:
    """A folder transformers loads offline with nothing else: the weights and config.json of a
    GPT2LMHeadModel (or, with classifier, a GPT2ForSequenceClassification), GPT-2's tokenizer (an instruction
    model's template as its chat template), generation_config.json (a language model's) and the card."""
    folder = Path(folder)
    if classifier:
        write_classifier(folder, model, classifier)
    else:
        export_hf(model, folder)  # GPT2LMHeadModel's weights and config
    write_tokenizer(folder, max_length=classifier.max_length if classifier else model.config.context_length,
                    pad_id=classifier.pad_id if classifier else None,
                    chat_template=chat_template(*template) if template else None)
    if generation is not None:
        atomic_write_text(folder / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    if card:
        atomic_write_text(folder / "README.md", card)
    return folder
