"""params.yaml: read as DVC reads it (YAML 1.2), validated by the settings dataclasses, and rendered back.

Every section is checked before any stage does work, so a typo in `generate` fails `prepare` at once
instead of after an hour of training. The schema, the defaults and the comments of params.yaml all come
from the fields in gptcore/settings/; `python -m gptcore.params [params.yaml]` rewrites the file from
them, keeping its values (after a setting is added, renamed or re-documented).
"""

from __future__ import annotations

import copy
import io
import json
import re
import sys
import textwrap
from dataclasses import Field, dataclass, fields
from pathlib import Path

from .atomic import atomic_write_text
from .errors import ConfigError
from .settings import default, doc
from .settings.classify import CLASSIFY_TRAIN_DEFAULTS, CLASSIFY_TRAIN_DOCS, ClassifyConfig
from .settings.data import DataConfig
from .settings.evaluate import EvaluateConfig
from .settings.export import ExportConfig
from .settings.generate import GenerateConfig
from .settings.instruct import INSTRUCT_TRAIN_DEFAULTS, INSTRUCT_TRAIN_DOCS, InstructConfig
from .settings.judge import JudgeConfig
from .settings.lora import LoraConfig
from .settings.preference import PREFERENCE_TRAIN_DEFAULTS, PREFERENCE_TRAIN_DOCS, PreferenceConfig
from .settings.recipes import RECIPES
from .settings.model import ModelConfig, ModelSource
from .settings.tracking import TrackingConfig
from .settings.train import TrainConfig
from .settings.zero_shot import ZeroShotConfig

# section -> its dataclasses; the model section is ModelSource's fields, then ModelConfig's as overrides
# of the preset (null: the preset's value)
SECTIONS = {"data": (DataConfig,), "model": (ModelSource, ModelConfig), "train": (TrainConfig,),
            "lora": (LoraConfig,), "evaluate": (EvaluateConfig,), "zero_shot": (ZeroShotConfig,),
            "generate": (GenerateConfig,), "tracking": (TrackingConfig,), "classify": (ClassifyConfig,),
            "classify_train": (TrainConfig,), "classify_lora": (LoraConfig,), "instruct": (InstructConfig,),
            "instruct_train": (TrainConfig,), "instruct_lora": (LoraConfig,), "instruct_export": (ExportConfig,),
            "preference": (PreferenceConfig,), "preference_train": (TrainConfig,), "preference_lora": (LoraConfig,),
            "judge": (JudgeConfig,)}
# a section that reuses another's dataclass: (that section, the title of this one, its own defaults, its own
# docs of the keys whose defaults or meaning are its own)
REUSED = {"classify_train": ("train", "the classifier's fine-tuning: the training loop's settings, the book's "
                                      "chapter 6 by default", CLASSIFY_TRAIN_DEFAULTS, CLASSIFY_TRAIN_DOCS),
          "classify_lora": ("lora", "the classifier's adapters (appendix E: rank 16, alpha 16 at lr 5e-5; the "
                                    "notebook's alpha/rank at 8e-4)", {}, {}),
          "instruct_train": ("train", "the instruction fine-tuning: the training loop's settings, the book's "
                                      "chapter 7 by default", INSTRUCT_TRAIN_DEFAULTS, INSTRUCT_TRAIN_DOCS),
          "instruct_lora": ("lora", "the instruction model's adapters (the book's exercise 7.4: rank 16, alpha 16)",
                            {}, {}),
          "preference_train": ("train", "the preference tuning (DPO): the training loop's settings, the notebook's "
                                        "by default", PREFERENCE_TRAIN_DEFAULTS, PREFERENCE_TRAIN_DOCS),
          "preference_lora": ("lora", "the preference-tuned model's adapters", {}, {})}
RENAMED = {"train.sampling": "train.windows"}
HEADER = """\
# gptcore pipeline parameters. Every key is defined, documented and validated in gptcore/settings/;
# `python -m gptcore.params` rewrites this file's layout and comments from there, keeping the values.
# Change one for an experiment:  dvc exp run -S train.peak_lr=1e-3
"""
LINE_WIDTH = 118
COMMENT_COLUMN = 30


class ParamsError(ConfigError):
    pass


def section_fields(section: str) -> dict[str, Field]:
    return {definition.name: definition for cls in SECTIONS[section] for definition in fields(cls)}


def section_doc(section: str, definition: Field) -> str:
    """The key's doc in this section: a reusing section's own words where it has them."""
    return REUSED[section][3].get(definition.name, doc(definition)) if section in REUSED else doc(definition)


def is_override(section: str, definition: Field) -> bool:
    return section == "model" and definition.name in ModelConfig.__dataclass_fields__


def section_defaults(section: str) -> dict:
    own = REUSED[section][2] if section in REUSED else {}
    return {name: None if is_override(section, definition) else own.get(name, default(definition))
            for name, definition in section_fields(section).items()}


def build(section: str, cls, values: dict):
    """cls(**values), its errors naming this section's keys when it reuses another's dataclass."""
    try:
        return cls(**values)
    except ConfigError as error:
        if section not in REUSED:
            raise
        raise ConfigError(re.sub(rf"\b{REUSED[section][0]}\.", f"{section}.", str(error))) from None


@dataclass(frozen=True)
class Params:
    """A validated params file: the typed sections, and `values`, every key with defaults filled in
    (what MLflow logs and the run key hashes)."""
    values: dict
    data: DataConfig
    model: ModelSource
    model_config: ModelConfig
    train: TrainConfig
    evaluate: EvaluateConfig
    zero_shot: ZeroShotConfig
    generate: GenerateConfig
    tracking: TrackingConfig
    lora: LoraConfig
    classify: ClassifyConfig
    classify_train: TrainConfig
    classify_lora: LoraConfig
    instruct: InstructConfig
    instruct_train: TrainConfig
    instruct_lora: LoraConfig
    instruct_export: ExportConfig
    preference: PreferenceConfig
    preference_train: TrainConfig
    preference_lora: LoraConfig
    judge: JudgeConfig


def validate(raw, source: str = "params.yaml") -> Params:
    """Check every section; raises ParamsError (one line naming the file and the key path)."""
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of sections {', '.join(SECTIONS)}")
    for section in raw:
        if section not in SECTIONS:
            raise ParamsError(f"{source}: unknown section {section!r}; sections are {', '.join(SECTIONS)}")
    values = {}
    for section in SECTIONS:
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise ParamsError(f"{source}: {section} must be a mapping of keys, got {given!r}")
        known = section_fields(section)
        for key in given:
            if f"{section}.{key}" in RENAMED:
                raise ParamsError(f"{source}: {section}.{key} was renamed; write {RENAMED[f'{section}.{key}']} "
                                  "(same values)")
            if key not in known:
                raise ParamsError(f"{source}: unknown key {section}.{key}; known keys in {section}: "
                                  f"{', '.join(known)}")
        values[section] = {**section_defaults(section), **given}
    try:
        model = values["model"]
        source_fields = {key: model[key] for key in ModelSource.__dataclass_fields__}
        overrides = {key: value for key, value in model.items() if key not in source_fields and value is not None}
        plain = {section: build(section, classes[0], values[section]) for section, classes in SECTIONS.items()
                 if section != "model"}
        return Params(values, model=ModelSource(**source_fields),
                      model_config=ModelConfig.from_preset(source_fields["preset"], **overrides), **plain)
    except ConfigError as error:
        raise ParamsError(f"{source}: {error}") from None


def yaml_1_2():
    """ruamel's pure-Python loader, the YAML 1.2 that DVC reads params.yaml with (1e-3 is a number)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True)


def read_yaml(path: Path):
    from ruamel.yaml import YAMLError

    if not path.is_file():
        raise ParamsError(f"{path} not found; run from the project root or pass the params file")
    try:
        return yaml_1_2().load(path.read_text())
    except YAMLError as error:
        raise ParamsError(f"{path}: not valid YAML ({str(error).strip().splitlines()[0]})") from None


def load_params(path="params.yaml") -> Params:
    path = Path(path)
    return validate(read_yaml(path), str(path))


def yaml_scalar(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    plain = str(value)
    try:
        if yaml_1_2().load(io.StringIO(f"key: {plain}\n")) == {"key": plain} and "#" not in plain:
            return plain
    except Exception:  # not a plain scalar: quote it
        pass
    return json.dumps(plain, ensure_ascii=False)  # a JSON string is a YAML double-quoted scalar


def commented(line: str, comment: str, indent: str) -> list[str]:
    """`line  # comment`, or the comment above the line when both do not fit LINE_WIDTH."""
    inline = f"{line}{' ' * max(2, COMMENT_COLUMN - len(line))}# {comment}"
    if len(inline) <= LINE_WIDTH:
        return [inline]
    return [*textwrap.wrap(comment, LINE_WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# "),
            line]


def render(values: dict) -> str:
    """params.yaml holding `values` (every section and key, in definition order), documented."""
    lines = [HEADER.rstrip("\n")]
    for section in SECTIONS:
        summary = " ".join(sys.modules[SECTIONS[section][-1].__module__].__doc__.strip().split("\n\n")[0].split())
        title = REUSED[section][1] if section in REUSED else summary.split(': ', 1)[1].rstrip('.')
        lines += ["", *textwrap.wrap(title, LINE_WIDTH, initial_indent="# ", subsequent_indent="# "), f"{section}:"]
        if section == "model":
            lines.append("  # the keys from vocab_size on override the preset; null keeps the preset's value")
        for name, definition in section_fields(section).items():
            value, described = values[section][name], section_doc(section, definition)
            if isinstance(value, list):
                lines += commented(f"  {name}:", described, "  ")
                lines += [f"    - {yaml_scalar(item)}" for item in value]
            else:
                lines += commented(f"  {name}: {yaml_scalar(value)}", described, "  ")
    return "\n".join(lines) + "\n"


def with_recipe(name: str, values: dict, **overrides) -> dict:
    """A copy of `values` (a params file's) with the recipe's values set, then `overrides` ({"train.batch_size": 2},
    say, for a smaller machine)."""
    changed = copy.deepcopy(values)
    for key, value in [*((key, value) for key, (value, _) in RECIPES[name].items()), *overrides.items()]:
        section, setting_name = key.split(".")
        changed[section][setting_name] = value
    return changed


def recipe_options(name: str, values: dict) -> list[str]:
    """A recipe's values as `dvc exp run` options (-S key=value), checked by validating `values` (a params file's)
    with them applied: a recipe that no longer fits the definitions fails here, not in a stage."""
    validate(with_recipe(name, values), f"recipe {name}")
    return [option for key, (value, _) in RECIPES[name].items() for option in ("-S", f"{key}={flow_value(value)}")]


def flow_value(value) -> str:
    """A value as one shell word that DVC's -S reads back as YAML: a scalar, or a flow list [a,b]."""
    return f"[{','.join(yaml_scalar(item) for item in value)}]" if isinstance(value, list) else yaml_scalar(value)


def main(argv=None) -> int:
    """Rewrite a params file (default params.yaml) from the definitions, keeping its values."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "params.yaml")
    try:
        params = load_params(path)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    atomic_write_text(path, render(params.values))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
