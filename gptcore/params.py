"""params.yaml: schema, defaults and validation, with one-line errors that name the key path.

Every section is checked before any stage does work, so a typo in `generate` fails `prepare` at once
instead of after an hour of training.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from .model import INITS, POS_EMBEDDINGS, PRESETS
from .runtime import INFERENCE_WEIGHTS, PRECISIONS
from .trainer import DECAY_TARGETS, SAMPLINGS, TrainConfig


class ParamsError(ValueError):
    pass


@dataclass(frozen=True)
class Rule:
    kind: str  # "int", "float", "bool", "str", "choice", "str_list", "sha256"
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None
    high_open: bool = False
    low_open: bool = False
    choices: tuple = ()
    nullable: bool = False

    def describe(self) -> str:
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind in ("int", "float"):
            noun = "an integer" if self.kind == "int" else "a number"
            bounds = []
            if self.low is not None:
                bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
            if self.high is not None:
                bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
            text = f"{noun} {' and '.join(bounds)}".strip()
        elif self.kind == "str_list":
            text = "a non-empty list of non-empty strings"
        elif self.kind == "sha256":
            text = "a 64-character hex sha256"
        else:
            text = {"bool": "true or false", "str": "a non-empty string"}[self.kind]
        return text + (" or null" if self.nullable else "")

    def accepts(self, value) -> bool:
        if value is None:
            return self.nullable
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "str":
            return isinstance(value, str) and bool(value.strip())
        if self.kind == "choice":
            return isinstance(value, str) and value in self.choices
        if self.kind == "str_list":
            return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)
        if self.kind == "sha256":
            return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return False
        return True


POSITIVE_INT = Rule("int", low=1)
LR = Rule("float", low=0.0, high=1.0)

SCHEMA: dict[str, dict[str, Rule]] = {
    "data": {
        "source": Rule("str"), "sha256": Rule("sha256", nullable=True),
        "train_ratio": Rule("float", low=0.0, high=1.0, low_open=True, high_open=True),
    },
    "model": {
        "preset": Rule("choice", choices=tuple(PRESETS)),
        "init_from": Rule("str"),
        "context_length": Rule("int", low=1, nullable=True), "emb_dim": Rule("int", low=1, nullable=True),
        "n_heads": Rule("int", low=1, nullable=True), "n_layers": Rule("int", low=1, nullable=True),
        "vocab_size": Rule("int", low=1, nullable=True),
        "drop_rate": Rule("float", low=0.0, high=1.0, high_open=True, nullable=True),
        "qkv_bias": Rule("bool", nullable=True), "tie_embeddings": Rule("bool", nullable=True),
        "pos_embedding": Rule("choice", choices=POS_EMBEDDINGS, nullable=True),
        "init": Rule("choice", choices=INITS, nullable=True),
    },
    "train": {
        "epochs": Rule("int", low=1, nullable=True), "max_steps": Rule("int", low=1, nullable=True),
        "batch_size": POSITIVE_INT, "grad_accum_steps": POSITIVE_INT,
        "sampling": Rule("choice", choices=SAMPLINGS), "stride": Rule("int", low=1, nullable=True),
        "shuffle": Rule("bool"), "drop_last": Rule("bool"),
        "peak_lr": Rule("float", low=0.0, high=1.0, low_open=True), "initial_lr": LR, "min_lr": LR,
        "warmup_steps": Rule("int", low=0), "cosine_decay": Rule("bool"),
        "weight_decay": Rule("float", low=0.0, high=1.0), "weight_decay_on": Rule("choice", choices=DECAY_TARGETS),
        "beta1": Rule("float", low=0.0, high=1.0, high_open=True),
        "beta2": Rule("float", low=0.0, high=1.0, high_open=True),
        "max_grad_norm": Rule("float", low=0.0), "clip_after_warmup": Rule("bool"),
        "eval_freq": POSITIVE_INT, "eval_iter": POSITIVE_INT,
        "sample_prompt": Rule("str", nullable=True), "sample_tokens": Rule("int", low=0),
        "precision": Rule("choice", choices=PRECISIONS), "compile": Rule("bool"), "device": Rule("str"),
        "seed": Rule("int", low=0), "checkpoint_every": Rule("int", low=0), "threads": Rule("int", low=1, nullable=True),
        "nproc": POSITIVE_INT,
    },
    "evaluate": {
        "batch_size": POSITIVE_INT, "max_batches": Rule("int", low=1, nullable=True),
        "precision": Rule("choice", choices=PRECISIONS), "device": Rule("str"),
    },
    "generate": {
        "prompts": Rule("str_list"), "max_new_tokens": Rule("int", low=1),
        "temperature": Rule("float", low=0.0), "top_k": Rule("int", low=1, nullable=True),
        "top_p": Rule("float", low=0.0, high=1.0, low_open=True, nullable=True),
        "seed": Rule("int", low=0), "stop_at_eos": Rule("bool"), "device": Rule("str"),
        "weights": Rule("choice", choices=INFERENCE_WEIGHTS),
    },
    "tracking": {
        "enabled": Rule("bool"), "experiment": Rule("str"), "log_every": POSITIVE_INT,
        "on_unreachable": Rule("choice", choices=("fail", "local")),
    },
}

REQUIRED = {
    "data": ("source",), "model": ("preset",), "train": (), "evaluate": (), "generate": ("prompts",),
    "tracking": (),
}

DEFAULTS = {
    "data": {"sha256": None, "train_ratio": 0.9},
    "model": {"init_from": "scratch"},
    "train": {**asdict(TrainConfig()), "nproc": 1},
    "evaluate": {"batch_size": 2, "max_batches": None, "precision": "auto", "device": "auto"},
    "generate": {"max_new_tokens": 50, "temperature": 0.0, "top_k": None, "top_p": None, "seed": 123,
                 "stop_at_eos": True, "device": "auto", "weights": "fp32"},
    "tracking": {"enabled": True, "experiment": "gptcore", "log_every": 10, "on_unreachable": "fail"},
}


def validate(params, source: str = "params.yaml") -> dict:
    """Check every section; return params with defaults filled in. Raises ParamsError (one line)."""
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of sections {sorted(SCHEMA)}")
    for section in params:
        if section not in SCHEMA:
            raise ParamsError(f"{source}: unknown section {section!r}; sections are {', '.join(SCHEMA)}")
    result = {}
    for section, rules in SCHEMA.items():
        values = params.get(section) or {}
        if not isinstance(values, dict):
            raise ParamsError(f"{source}: {section} must be a mapping of keys, got {values!r}")
        for key, value in values.items():
            if key not in rules:
                raise ParamsError(f"{source}: unknown key {section}.{key}; known keys in {section}: "
                                  f"{', '.join(rules)}")
            if not rules[key].accepts(value):
                raise ParamsError(f"{source}: {section}.{key} = {value!r} is invalid; it must be "
                                  f"{rules[key].describe()}")
        for key in REQUIRED[section]:
            if key not in values:
                raise ParamsError(f"{source}: {section}.{key} is missing; it must be {rules[key].describe()}")
        result[section] = {**DEFAULTS[section], **values}
    train = result["train"]
    if train["epochs"] is None and train["max_steps"] is None:
        raise ParamsError(f"{source}: train.epochs and train.max_steps are both null; set one of them")
    if result["data"]["source"].startswith(("http://", "https://")) and not result["data"]["sha256"]:
        raise ParamsError(f"{source}: data.sha256 is missing; a URL source ({result['data']['source']}) "
                          f"needs its sha256 to be verified")
    try:
        model_config(result["model"])
    except ValueError as error:
        raise ParamsError(f"{source}: model section: {error}") from None
    return result


def model_config(model_params: dict):
    """The ModelConfig that params.model describes (preset plus the overrides that are not null)."""
    from .model import ModelConfig

    overrides = {k: v for k, v in model_params.items() if k not in ("preset", "init_from") and v is not None}
    return ModelConfig.from_preset(model_params["preset"], **overrides)


def load_params(path="params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found; run from the project root or pass the params file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    return validate(raw, str(path))
