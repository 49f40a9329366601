import importlib.util
import json
import math
import re

import pytest
import torch

from gptcore.bench import (format_table, interleaved, last_round_moved, matmul_peak, model_flops_utilization,
                           model_gemm_shapes, nanogpt_twin, paired_ratios, run_benchmark)
from gptcore.cli import main
from gptcore.errors import ConfigError
from gptcore.formats.model_folder import save_model
from gptcore.model.gpt import GPT, ModelConfig


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model")
    save_model(GPT(ModelConfig.from_preset("tiny")), folder)
    return folder


def test_info_reports_parameters_and_config(model_dir, capsys):
    assert main(["info", str(model_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == GPT(ModelConfig.from_preset("tiny")).num_parameters()
    assert info["config"]["n_layers"] == 2


@pytest.mark.parametrize("weights", ["auto", "fp32"])
def test_generate_streams_the_greedy_continuation(model_dir, capsys, tokenizer, weights):
    from gptcore.formats.loading import load_model
    from gptcore.model.inference import prepare_for_inference
    from gptcore.model.sampling import generate

    assert main(["generate", "Every effort moves you", "--model", str(model_dir), "--max-new-tokens", "12",
                 "--temperature", "0", "--no-eos", "--weights", weights]) == 0
    model = prepare_for_inference(load_model(model_dir), weights, torch.device("cpu"))
    expected = generate(model, torch.tensor([tokenizer.encode("Every effort moves you")]), 12)
    assert capsys.readouterr().out == tokenizer.decode(expected[0].tolist()) + "\n"


def test_export_hf_then_generate_from_the_hf_folder(model_dir, tmp_path, capsys):
    assert main(["export-hf", str(model_dir), str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    texts = []
    for model in (model_dir, tmp_path / "hf"):  # the same weights sample the same text
        assert main(["generate", "Hello", "--model", str(model), "--max-new-tokens", "5", "--no-eos"]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] and texts[0].startswith("Hello") and len(texts[0]) > len("Hello\n")


@pytest.mark.parametrize("argv,message", [
    (["info", "/nonexistent/model"], "holds no gptcore model"),
    (["generate", "", "--model", "MODEL"], "prompt is empty"),
    (["generate", "Hi", "--model", "MODEL", "--top-p", "1.5"],
     "generate.top_p = 1.5 is invalid; it must be a number > 0 and <= 1 or null"),
    (["generate", "Hi", "--model", "MODEL", "--top-k", "0"],
     "generate.top_k = 0 is invalid; it must be an integer >= 1 or null"),
    (["generate", "Hi", "--model", "MODEL", "--temperature", "-1"],
     "generate.temperature = -1.0 is invalid; it must be a number >= 0"),
    (["generate", "word " * 100, "--model", "MODEL"], "the prompt is 101 tokens, longer than the model's context of 64"),
])
def test_user_errors_exit_1_with_a_message_before_any_output(model_dir, capsys, argv, message):
    argv = [str(model_dir) if a == "MODEL" else a for a in argv]
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert message in err and "Traceback" not in err and out == ""


def test_help_for_every_command(capsys):
    for command in ("generate", "bench", "export-hf", "info"):
        with pytest.raises(SystemExit) as done:
            main([command, "--help"])
        assert done.value.code == 0
    assert "--top-p" in capsys.readouterr().out


@pytest.mark.slow
def test_benchmark_measures_every_row_side_by_side(shared_dir):
    pytest.importorskip("transformers")
    result = run_benchmark(contexts=(256,), rounds=2, max_rounds=2, device_name="cpu", tokenize_mb=1,
                           corpus=shared_dir / "data" / "the-verdict.txt", precisions=("fp32",), preset="tiny")
    measures = {(r["measure"], r["impl"]) for r in result["rows"]}
    for measure in ("train step", "eval forward", "greedy generate"):
        assert {(measure, "gptcore"), (measure, "hf")} <= measures
    assert {("tokenize", "gptcore"), ("mlflow tracking", "gptcore"), ("system metrics", "gptcore")} <= measures
    train = [r for r in result["rows"] if r["measure"] == "train step"]
    assert all(0 < r["mfu"] < 1 for r in train)
    for row in train + [r for r in result["rows"] if r["measure"] == "greedy generate"]:  # every round kept
        assert len(row["seconds"]) == row["rounds"] == 2
        assert row["tokens_per_s_min"] <= row["tokens_per_s"] <= row["tokens_per_s_max"]
    hf = next(r for r in train if r["impl"] == "hf")
    assert hf["against"] == "gptcore" and hf["speedup"]["min"] <= hf["speedup"]["median"] <= hf["speedup"]["max"]
    if importlib.util.find_spec("llms_from_scratch"):  # the book's model joins where its package is installed,
        assert {("train step", "book"), ("train step", "gptcore untied")} <= measures  # beside gptcore untied
        assert next(r for r in train if r["impl"] == "book")["against"] == "gptcore untied"
    table = format_table(result)
    assert "nanoGPT" not in table  # a peer's rows only where it ran
    for weights in ("fp32", "bf16", "int8"):
        assert table.count(f"| greedy generate | 256 | 1 | {weights} weights | gptcore |") == 1
    assert "| train step | 256 | 2 | fp32 | HF GPT2LMHeadModel |" in table and "x (" in table
    assert "Tokenization:" in table and ("AMX yes" in table or "AMX no" in table)


def test_nanogpt_peer_is_the_gpt_of_a_checkouts_model_py_configured_as_its_train_py(tmp_path):
    # a stand-in with nanoGPT's interface (GPTConfig fields, GPT(config), forward(idx, targets)); the real
    # file stays in the user's checkout
    (tmp_path / "model.py").write_text(
        "from dataclasses import dataclass\n"
        "import torch\n"
        "@dataclass\n"
        "class GPTConfig:\n"
        "    block_size: int = 1024\n    vocab_size: int = 50304\n    n_layer: int = 12\n    n_head: int = 12\n"
        "    n_embd: int = 768\n    dropout: float = 0.0\n    bias: bool = True\n"
        "class GPT(torch.nn.Module):\n"
        "    def __init__(self, config):\n        super().__init__()\n        self.config = config\n")
    twin = nanogpt_twin(tmp_path, ModelConfig.from_preset("tiny", context_length=48))
    assert vars(twin.config) == {"block_size": 48, "vocab_size": 50304, "n_layer": 2, "n_head": 2, "n_embd": 64,
                                 "dropout": 0.0, "bias": False}
    as_gpt2 = nanogpt_twin(tmp_path, ModelConfig.from_preset("tiny", context_length=48), "gpt2")
    assert (as_gpt2.config.vocab_size, as_gpt2.config.bias) == (50257, True)  # GPT-2's layout, gptcore's rows
    with pytest.raises(ConfigError, match=f"--nanogpt {tmp_path / 'none'}: no model.py there"):
        nanogpt_twin(tmp_path / "none", ModelConfig.from_preset("tiny"))


def fake_rates(rates: dict):
    """A rate_of for matmul_peak: FLOP/s by shape, each product taking 10 ms."""
    return lambda m, k, n, dtype, device: (rates.get((m, k, n), 1e9), 0.01)


def test_the_peak_is_the_fastest_shape_measured_and_the_squares_stop_where_the_rate_stops_rising():
    squares = {(256,) * 3: 50e9, (512,) * 3: 80e9, (1024,) * 3: 90e9, (2048,) * 3: 91e9, (4096,) * 3: 120e9}
    peak = matmul_peak(torch.float32, torch.device("cpu"), rate_of=fake_rates(squares))
    # 2048 rose by 1 % only: the squares stop there, 4096 is never tried
    assert peak["flops"] == 91e9 and peak["shape"] == "2048x2048x2048" and "4096x4096x4096" not in peak["rates"]
    model_shape = (512, 768, 3072)
    peak = matmul_peak(torch.float32, torch.device("cpu"), [model_shape],
                       rate_of=fake_rates({**squares, model_shape: 108e9}))
    assert peak["flops"] == 108e9 and peak["shape"] == "512x768x3072"  # a model GEMM beating the squares raises it
    assert model_gemm_shapes(ModelConfig.from_preset("gpt2-small"), 512) == [
        (512, 768, 2304), (512, 768, 768), (512, 768, 3072), (512, 3072, 768), (512, 768, 50257)]


def test_an_mfu_above_100_percent_is_refused_with_the_reason():
    assert model_flops_utilization(54e9, 108e9) == (0.5, None)
    mfu, why = model_flops_utilization(108e9, 90e9)
    assert mfu is None and "sustained 108 GFLOP/s, above the fastest matmul measured (90 GFLOP/s)" in why


def scripted(seconds_by_variant: dict):
    """A timer for interleaved: each variant's scripted seconds, round by round (the warm-up first)."""
    queues = {name: list(values) for name, values in seconds_by_variant.items()}
    return lambda fn, device: queues[fn].pop(0)


def test_rounds_are_added_until_one_more_moves_no_ratio_by_more_than_the_bound():
    cpu = torch.device("cpu")
    # gptcore steady at 1.0 s; the peer's rounds swing, then settle near 1.2 s
    peer = [9.0, 1.0, 1.5, 1.2, 1.21, 1.19, 1.2, 1.2, 1.2, 1.2, 1.2]
    timing = interleaved({"gptcore": "gptcore", "peer": "peer"}, cpu, pairs=[("peer", "gptcore")], min_rounds=3,
                         max_rounds=10, within=0.02, timer=scripted({"gptcore": [5.0] + [1.0] * 10, "peer": peer}))
    assert timing["seconds"]["peer"] == [1.0, 1.5, 1.2, 1.21]  # the warm-up is not kept; round 4 moved 0.4 %
    assert timing["rounds"] == 4 and timing["settled"] and timing["moved"] == pytest.approx(1.205 / 1.2 - 1)
    assert paired_ratios(timing["seconds"], [("peer", "gptcore")])[("peer", "gptcore")] == [1.0, 1.5, 1.2, 1.21]
    swinging = [1.0, 2.0] * 6
    timing = interleaved({"gptcore": "gptcore", "peer": "peer"}, cpu, pairs=[("peer", "gptcore")], min_rounds=3,
                         max_rounds=6, within=0.02, timer=scripted({"gptcore": [1.0] * 12, "peer": swinging}))
    assert timing["rounds"] == 6 and not timing["settled"]  # the cap came first: said, not hidden
    assert last_round_moved({"a": [1.0], "b": [2.0]}, [("a", "b")]) == math.inf  # one round measures no move


def test_every_option_of_every_command_says_what_it_does_and_its_default():
    import argparse

    from gptcore.cli import build_parser

    (commands,) = [action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction)]
    assert all(listed.help for listed in commands._choices_actions)
    for name, command in commands.choices.items():
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            where = f"gptcore {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{where} has no help"
            if action.nargs != 0 and (action.option_strings or action.nargs == "?"):  # a value that can be left out
                assert "default" in action.help, f"{where} does not say its default"
        assert "%(default)" not in command.format_help()


def test_bench_help_shows_its_schedule_defaults_as_numbers_and_refuses_a_bad_one(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for option, value in (("--rounds", 3), ("--max-rounds", 10), ("--settled-within", 0.02)):
        assert re.search(rf"{option} \S+ .*?\(default: {value}\)", shown), option
    assert "gptcore.bench" not in shown
    assert main(["bench", "--rounds", "0"]) == 1  # before any timing
    assert capsys.readouterr().err.strip() == ("gptcore bench: error: --rounds = 0 is invalid; it must be an integer "
                                               ">= 1")
