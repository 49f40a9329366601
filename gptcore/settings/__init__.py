"""Every gptcore setting is defined once: a dataclass field with its type, default, bounds and doc.

One dataclass per params.yaml section (settings.data, .model, .train, .evaluate, .generate, .tracking),
each in its own torch-free module so that a stage depends on the definitions it uses and nothing else.
`setting()` declares a field; `check_fields()` validates an instance against its fields, raising one
line that names the key path (`train.peak_lr = -1 is invalid; it must be a number > 0 and <= 1`).
gptcore.params builds the params.yaml schema, its comments and its defaults from these fields.
"""

import math
import posixpath
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields

from ..errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Rule:
    """What a value must be: derived from the field's annotation and the bounds given to setting()."""
    kind: str  # "int", "float", "bool", "str", "choice", "str_list", "sha256", "model_name"
    nullable: bool = False
    low: float | None = None  # inclusive unless low_open
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()

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
        else:
            text = {"bool": "true or false", "str": "a non-empty string", "sha256": "a 64-character hex sha256",
                    "str_list": "a non-empty list of non-empty strings",
                    "model_name": "a name MLflow's model registry takes (no '/' or ':', not a path that "
                                  "normalises to another)"}[self.kind]
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
            return isinstance(value, (list, tuple)) and bool(value) and \
                all(isinstance(v, str) and v.strip() for v in value)
        if self.kind == "sha256":
            return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)
        if self.kind == "model_name":  # the rules of mlflow.utils.validation._validate_model_name (mlflow is
            # too slow to import where params are read); tests compare the two
            return isinstance(value, str) and bool(value.strip()) and not set("/:") & set(value) and \
                posixpath.normpath(value) == value and value != "." and not value.startswith("..")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))


def setting(default, doc: str, *, low=None, high=None, low_open=False, high_open=False, choices=(),
            sha256=False, model_name=False) -> Field:
    """A documented, validated dataclass field. The kind comes from the annotation (int, float, bool,
    str, list[str], `| None` for nullable); choices make a str a choice; sha256 a checksum; model_name a
    name in MLflow's model registry."""
    metadata = {"doc": doc, "bounds": dict(low=low, high=high, low_open=low_open, high_open=high_open),
                "choices": tuple(choices), "sha256": sha256, "model_name": model_name}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def rule(definition: Field, nullable: bool | None = None) -> Rule:
    """The Rule of a field declared with setting(); nullable overrides the annotation's."""
    annotation = definition.type
    args = typing.get_args(annotation)
    is_optional = isinstance(annotation, types.UnionType) and type(None) in args
    base = next(a for a in args if a is not type(None)) if is_optional else annotation
    meta = definition.metadata
    if meta["choices"]:
        kind = "choice"
    elif meta["sha256"]:
        kind = "sha256"
    elif meta["model_name"]:
        kind = "model_name"
    else:
        kind = {int: "int", float: "float", bool: "bool", str: "str", list[str]: "str_list"}[base]
    return Rule(kind, is_optional if nullable is None else nullable, choices=meta["choices"], **meta["bounds"])


def doc(definition: Field) -> str:
    return definition.metadata["doc"]


def default(definition: Field):
    return definition.default_factory() if definition.default is MISSING else definition.default


def check_value(definition: Field, section: str, value) -> None:
    """Raise ConfigError naming `section.field`, the value and the rule, unless the rule accepts it."""
    expected = rule(definition)
    if not expected.accepts(value):
        raise ConfigError(f"{section}.{definition.name} = {value!r} is invalid; it must be {expected.describe()}")


def check_fields(instance, section: str) -> None:
    """check_value for every field of a settings dataclass, in order."""
    for definition in fields(instance):
        check_value(definition, section, getattr(instance, definition.name))


def checksum_setting(default: str | None, of: str = "the source") -> Field:
    """A section's `sha256`: the checksum its source is verified with (check_source_checksum)."""
    return setting(default, f"checksum of {of}, verified; required for a URL", sha256=True)


def check_source_checksum(instance, section: str, source: str = "source", sha256: str = "sha256") -> None:
    """A URL source needs its sha256: what is downloaded is verified before it is used."""
    url = getattr(instance, source)
    if url.startswith(("http://", "https://")) and not getattr(instance, sha256):
        raise ConfigError(f"{section}.{sha256} is missing; a URL source ({url}) needs its sha256 to be verified "
                          f"(sha256sum of a download of it), or set {section}.{source} to a local file")


def check_split_ratios(instance, section: str, first: str, second: str, rest: str) -> None:
    """Two shares of the rows (e.g. train_ratio and val_ratio) must leave some for the third split."""
    total = getattr(instance, first) + getattr(instance, second)
    if total >= 1:
        raise ConfigError(f"{section}.{first} + {section}.{second} = {total:g} leaves no {rest} split; make their "
                          "sum < 1")


def registered_model_setting(name: str, doc: str = "registered model name in MLflow; null = logged with the "
                                                  "run, not registered") -> Field:
    return setting(name, doc, model_name=True)


def experiment_setting(name: str) -> Field:
    """A pipeline's MLflow experiment: its own, so that its curves chart on their own scale."""
    return setting(name, "MLflow experiment of this pipeline's runs (its own: `gptcore ui --experiment` shows it)")


def book_heads_setting() -> Field:
    """A fine-tuning section's `n_heads`: the head count of a book file it starts from (gptcore.formats.book)."""
    return setting(None, "the head count of a book model.pth init_from, whose tensors do not hold it; null: GPT-2's "
                         "for a file of one of its four sizes, else refused", low=1)
