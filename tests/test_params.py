import copy
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from gptcore.params import SCHEMA, ParamsError, load_params, model_config, validate
from gptcore.trainer import TrainConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((REPO / "params.yaml").read_text())


def test_committed_params_are_the_seed_recipe():
    params = load_params(REPO / "params.yaml")
    config = model_config(params["model"])
    assert (config.n_layers, config.emb_dim, config.context_length, config.drop_rate, config.qkv_bias) == \
        (12, 768, 256, 0.1, False)
    train = params["train"]
    assert train["batch_size"] == 2 and train["weight_decay"] == 0.1 and train["max_grad_norm"] == 1.0
    assert 4e-4 <= train["peak_lr"] <= 1e-3 and train["epochs"] == 10


def test_train_schema_covers_exactly_the_trainer_config_and_the_process_count():
    assert set(SCHEMA["train"]) == {f.name for f in fields(TrainConfig)} | {"nproc"}


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
    ("data", "train_ratio", 1.5, "< 1"),
    ("data", "sha256", "abc", "sha256"),
    ("generate", "top_p", 0, "> 0"),
    ("generate", "prompts", [], "non-empty list"),
    ("tracking", "on_unreachable", "retry", "'fail'"),
])
def test_bad_values_name_file_key_value_and_rule(section, key, value, allowed):
    params = copy.deepcopy(DEFAULT)
    params[section][key] = value
    with pytest.raises(ParamsError) as error:
        validate(params)
    message = str(error.value)
    assert message.startswith(f"params.yaml: {section}.{key} = {value!r} is invalid") and allowed in message
    assert "\n" not in message


def test_unknown_keys_and_sections_are_named():
    params = copy.deepcopy(DEFAULT)
    params["train"]["peak_lrr"] = 1e-3
    with pytest.raises(ParamsError, match="unknown key train.peak_lrr"):
        validate(params)
    with pytest.raises(ParamsError, match="unknown section 'optimizer'"):
        validate({**DEFAULT, "optimizer": {}})


def test_model_section_is_checked_as_a_whole():
    params = copy.deepcopy(DEFAULT)
    params["model"]["n_heads"] = 5
    with pytest.raises(ParamsError, match=r"emb_dim \(768\) must be divisible by n_heads \(5\)"):
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


def test_stage_reports_bad_params_in_one_line_before_any_work(tmp_path):
    params = copy.deepcopy(DEFAULT)
    params["generate"]["temperature"] = -0.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = subprocess.run([sys.executable, str(REPO / "stages" / "prepare.py")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: params.yaml: generate.temperature = -0.5 is invalid; it must be a "
                                     "number >= 0")
    assert not (tmp_path / "data").exists()
