"""The GPT-2 124M recipe (build-nanogpt's run) for a few steps through the pipeline's stages, on a small Parquet set
with the batch scaled down; its options as `dvc exp run` reads them."""

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from gptcore.cli import main as gptcore
from gptcore.params import read_yaml, validate, with_recipe, yaml_1_2
from gptcore.settings.recipes import GPT2_124M

REPO = Path(__file__).resolve().parents[1]


def test_the_recipe_prints_one_shell_word_per_option(capsys):
    assert gptcore(["recipe", "gpt2-124m", "--params", str(REPO / "params.yaml")]) == 0
    words = capsys.readouterr().out.split()
    assert words[0::2] == ["-S"] * len(GPT2_124M)
    settings = dict(word.split("=", 1) for word in words[1::2])
    assert settings["train.max_steps"] == "19073" and settings["train.peak_lr"] == "0.0006"
    assert settings["zero_shot.train_tasks"] == "[lambada]" and settings["data.sha256"] == "null"
    # DVC reads each value back as YAML 1.2 (6e-05 is a number there): the recipe's own values
    assert {key: yaml_1_2().load(io.StringIO(f"value: {value}"))["value"] for key, value in settings.items()} == \
        {key: value for key, (value, _) in GPT2_124M.items()}


@pytest.mark.slow
def test_the_recipe_trains_a_few_steps_on_a_small_parquet_set(tmp_path, shared_dir):
    """124M at context 1024 as the recipe says; only the data, the batch (1 x 2 micro-steps of 1,024 tokens), the
    step count (and the warmup within it), the evaluation sizes and the runtime (fp32, no compile on a CPU) are
    scaled to this machine."""
    entries = json.loads((shared_dir / "data" / "instruction-data.json").read_text())
    pq.write_table(pa.table({"text": [e["instruction"] + "\n\n" + e["output"] for e in entries]}),
                   tmp_path / "docs.parquet")
    scaled = {"data.source": "docs.parquet", "data.shard_tokens": 20_000, "data.train_ratio": 0.9,
              "train.max_steps": 2, "train.warmup_steps": 1, "train.batch_size": 1, "train.grad_accum_steps": 2,
              "train.eval_freq": 1, "train.eval_iter": 1, "train.compile": False, "train.precision": "fp32",
              "train.checkpoint_every": 1, "train.sample_tokens": 4, "zero_shot.train_every": 2,
              "zero_shot.train_limit": 4, "tracking.enabled": False}
    params = with_recipe("gpt2-124m", read_yaml(REPO / "params.yaml"), **scaled)
    validate(params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "DVC_ROOT": str(tmp_path), "PYTHONPATH": str(REPO)}
    stages = [("plan_zero_shot", "--train", "plan/train.json", "--evaluate", "plan/evaluate.json"),
              ("prepare", "--out", "prepared"),
              ("tokenize_text", "--prepared", "prepared", "--out", "tokens"),
              ("train", "--zero-shot-plan", "plan/train.json", "--tokens", "tokens", "--models", "models",
               "--metrics", "train.json", "--speed", "speed.json", "--plots", "plots")]
    for script, *arguments in stages:
        run = subprocess.run([sys.executable, str(REPO / "stages" / f"{script}.py"), "--params", "params.yaml",
                              *arguments], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert run.returncode == 0, (script, run.stderr[-3000:])
    meta = json.loads((tmp_path / "tokens" / "meta.json").read_text())
    assert meta["layout"] == "shards" and meta["splits"]["train"]["shards"] > 1
    record = json.loads((tmp_path / "train.json").read_text())
    assert record["steps"] == 2 and record["tokens_seen"] == 2 * 2 * 1024
    assert record["parameters"] == 124_439_808  # GPT-2 small with biases and the tied head
    with open(tmp_path / "plots" / "eval.csv") as handle:
        val_losses = [float(row["val_loss"]) for row in csv.DictReader(handle)]
    assert len(val_losses) == 2 and val_losses[1] < val_losses[0] < math.log(50257) + 0.5  # from N(0, 0.02), learning
    assert json.loads((tmp_path / "plan" / "train.json").read_text())["train_tasks"] == ["lambada"]
