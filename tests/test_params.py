import copy
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from gptcore.params import SECTIONS, ParamsError, load_params, read_yaml, render, section_defaults, validate
from gptcore.settings.model import ModelConfig
from gptcore.settings.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT = read_yaml(REPO / "params.yaml")


def test_committed_params_are_the_book_recipe():
    params = load_params(REPO / "params.yaml")
    config = params.model_config
    assert (config.n_layers, config.emb_dim, config.context_length, config.drop_rate, config.qkv_bias,
            config.tie_embeddings, config.init) == (12, 768, 256, 0.1, False, False, "torch_default")
    train = params.train
    assert train.batch_size == 2 and train.weight_decay == 0.1 and train.max_grad_norm == 1.0
    assert 4e-4 <= train.peak_lr <= 1e-3 and train.epochs == 10


def test_params_yaml_is_the_definitions_rendered_with_their_defaults():
    """Every key of every section, in definition order, commented with its doc: `python -m gptcore.params`
    regenerates the file. Its values are the defaults, except the model keys that override the preset."""
    text = (REPO / "params.yaml").read_text()
    params = load_params(REPO / "params.yaml")
    assert render(params.values) == text, "params.yaml drifted from gptcore/settings/: run python -m gptcore.params"
    overrides = {f.name for f in fields(ModelConfig)}
    for section in SECTIONS:
        for key, value in section_defaults(section).items():
            if not (section == "model" and key in overrides):
                assert params.values[section][key] == value, f"{section}.{key}"
    assert params.train == TrainConfig()  # the library's defaults are the pipeline's


def test_rewriting_keeps_values_and_adds_what_is_missing(tmp_path):
    from gptcore.params import main

    (tmp_path / "params.yaml").write_text("train:\n  peak_lr: 1e-3   # my comment\n")
    assert main([str(tmp_path / "params.yaml")]) == 0
    text = (tmp_path / "params.yaml").read_text()
    assert "  peak_lr: 0.001" in text and "# my comment" not in text and "  nproc: 1 " in text
    assert load_params(tmp_path / "params.yaml").train == TrainConfig(peak_lr=1e-3)


def test_numbers_are_read_as_yaml_1_2_the_way_dvc_reads_them(tmp_path):
    from dvc.utils.serialize import load_yaml

    path = tmp_path / "params.yaml"
    path.write_text("data:\n  train_ratio: .5\ntrain:\n  peak_lr: 1e-3\n  initial_lr: 3E-4\n  min_lr: 1.0e-5\n")
    params = load_params(path)
    assert (params.data.train_ratio, params.train.peak_lr, params.train.initial_lr, params.train.min_lr) == \
        (0.5, 1e-3, 3e-4, 1e-5)
    assert load_yaml(path) == {"data": {"train_ratio": 0.5},
                               "train": {"peak_lr": 1e-3, "initial_lr": 3e-4, "min_lr": 1e-5}}


@pytest.mark.parametrize("section,key,value,allowed", [
    ("train", "peak_lr", -1, "a number > 0"),
    ("train", "peak_lr", "fast", "a number"),
    ("train", "batch_size", 2.5, "an integer >= 1"),
    ("train", "batch_size", True, "an integer"),
    ("train", "precision", "fp8", "one of 'auto'"),
    ("train", "max_grad_norm", float("nan"), "a number >= 0"),
    ("model", "preset", "gpt5", "one of 'gpt2-small'"),
    ("model", "drop_rate", 1.0, "< 1"),
    ("model", "init", "xavier", "one of 'torch_default', 'gpt2'"),
    ("train", "weight_decay_on", "biases", "one of 'all', 'matrices'"),
    ("train", "clip_after_warmup", "yes", "true or false"),
    ("train", "windows", "sampled", "one of 'sliding', 'random'"),
    ("data", "train_ratio", 1.5, "< 1"),
    ("data", "sha256", "abc", "sha256"),
    ("generate", "top_p", 0, "> 0"),
    ("generate", "prompts", [], "non-empty list"),
    ("tracking", "on_unreachable", "retry", "'fail'"),
    ("tracking", "registered_model", "a/b:c", "a name MLflow's model registry takes"),
    ("classify", "registered_model", "../spam", "a name MLflow's model registry takes"),
])
def test_bad_values_name_file_key_value_and_rule(section, key, value, allowed):
    params = copy.deepcopy(DEFAULT)
    params[section][key] = value
    with pytest.raises(ParamsError) as error:
        validate(params)
    message = str(error.value)
    assert message.startswith(f"params.yaml: {section}.{key} = {value!r} is invalid") and allowed in message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["gptcore", "gpt2 small", "a/b:c", "a/b", "x:1", "..", "../up", ".", "a//b",
                                  "a/./b", "/abs", "trailing/", " ", "", "a.b", "-v1_2"])
def test_registered_model_names_are_those_mlflow_accepts(name):
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    from gptcore.settings import rule
    from gptcore.settings.tracking import TrackingConfig

    try:
        _validate_model_name(name)
        accepted_by_mlflow = True
    except MlflowException:
        accepted_by_mlflow = False
    assert rule(TrackingConfig.__dataclass_fields__["registered_model"]).accepts(name) == accepted_by_mlflow


def test_unknown_keys_and_sections_are_named_and_renamed_keys_name_the_new_one():
    params = copy.deepcopy(DEFAULT)
    params["train"]["peak_lrr"] = 1e-3
    with pytest.raises(ParamsError, match="unknown key train.peak_lrr"):
        validate(params)
    with pytest.raises(ParamsError, match="unknown section 'optimizer'"):
        validate({**DEFAULT, "optimizer": {}})
    params = copy.deepcopy(DEFAULT)
    params["train"]["sampling"] = "random"
    with pytest.raises(ParamsError) as error:
        validate(params)
    assert str(error.value) == "params.yaml: train.sampling was renamed; write train.windows (same values)"


def test_model_section_is_checked_as_a_whole():
    params = copy.deepcopy(DEFAULT)
    params["model"]["n_heads"] = 5
    with pytest.raises(ParamsError, match=r"model.emb_dim \(768\) must be divisible by model.n_heads \(5\)"):
        validate(params)


def test_url_source_needs_sha256_and_length_needs_epochs_or_steps():
    params = copy.deepcopy(DEFAULT)
    params["data"]["sha256"] = None
    with pytest.raises(ParamsError, match="data.sha256"):
        validate(params)
    params = copy.deepcopy(DEFAULT)
    params["train"]["epochs"] = None
    with pytest.raises(ParamsError, match="train.epochs and train.max_steps"):
        validate(params)


def test_library_configs_raise_the_same_one_line_errors():
    with pytest.raises(ValueError) as error:
        TrainConfig(beta2=1.0)
    assert str(error.value) == "train.beta2 = 1.0 is invalid; it must be a number >= 0 and < 1"


def test_stage_reports_bad_params_in_one_line_before_any_work(tmp_path):
    params = copy.deepcopy(DEFAULT)
    params["generate"]["temperature"] = -0.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, str(REPO / "stages" / "prepare.py"), "--params", "params.yaml",
                             "--out", "data/prepared"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: params.yaml: generate.temperature = -0.5 is invalid; it must be a "
                                     "number >= 0")
    assert not (tmp_path / "data").exists()


def test_prepare_stage_does_not_import_torch(tmp_path, shared_dir):
    """Splitting text needs no torch: the prepare stage starts in a fraction of a second."""
    code = ("import runpy, sys; sys.argv = ['prepare.py', '--params', 'params.yaml', '--out', 'prepared'];"
            f"runpy.run_path({str(REPO / 'stages' / 'prepare.py')!r}, run_name='__main__');"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'mlflow')))")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**__import__("os").environ, "GPTCORE_MIRROR": str(shared_dir)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / "prepared" / "train.txt").is_file()


def test_a_fine_tuning_sections_comments_describe_its_own_defaults():
    """classify_train and instruct_train printed the pretraining comments ("... over 20 % of the 90 steps" above a
    warmup of 0): every key whose default is a section's own has that section's own words."""
    from gptcore.params import REUSED

    text = (REPO / "params.yaml").read_text()
    for section, (base, _, own_defaults, own_docs) in REUSED.items():
        assert set(own_defaults) <= set(own_docs), (section, sorted(set(own_defaults) - set(own_docs)))
        block = text.split(f"\n{section}:\n", 1)[1].split("\n\n", 1)[0]
        for pretraining_words in ("90 steps", "sliding windows", "windows per process", "4e-4 ... 1e-3"):
            assert pretraining_words not in block, (section, pretraining_words)
