"""The GPU check script's parts that run anywhere: on the CPU here, on CUDA when it is run on a GPU."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


def test_cached_generation_check_passes_on_the_cpu():
    assert gpu_check.check_kv_cache("cpu") == {"tokens": 200, "equal_tokens": 200, "passed": True}


@pytest.mark.slow
def test_resume_check_passes_on_the_cpu():
    assert gpu_check.check_resume("cpu", "fp32") == {"precision": "fp32", "differing_tensors": [], "passed": True}


def test_without_cuda_the_script_says_so_and_succeeds(monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("sys.argv", ["gpu_check.py"])
    assert gpu_check.main() == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_nanogpts_training_loop_reports_speed_and_mfu_on_the_cpu():
    import torch

    from gptcore.model.gpt import GPT, ModelConfig

    class ViewingGPT(GPT):  # nanoGPT's forward views its targets, which needs them contiguous
        def forward(self, idx, targets):
            return super().forward(idx, targets.view(-1).view(targets.shape))

    torch.manual_seed(0)
    config = ModelConfig.from_preset("tiny", context_length=32)
    model = ViewingGPT(config)
    before = [p.detach().clone() for p in model.parameters()]
    row = gpu_check.loop_throughput(model, config, "cpu", False, 1.0, batch=2, steps=5, precision="fp32",
                                    log_interval=2)
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # every parameter trained
    assert row["tokens_per_second"] == pytest.approx(2 * 32 / row["step_seconds"])
    n = GPT(config).num_parameters() - 32 * 64
    assert row["mfu"] == pytest.approx((6 * n + 12 * 2 * 64 * 32) * row["tokens_per_second"] / 1e12)
    with pytest.raises(ValueError, match="4 steps give 2 loss reads at log_interval 10; need 3"):
        gpu_check.loop_throughput(model, config, "cpu", False, 1.0, batch=2, steps=4, precision="fp32")


def test_the_side_by_side_table_runs_on_the_cpu():  # context 256: HF decodes 8 + 200 positions
    result = gpu_check.side_by_side("cpu", None, preset="tiny", context=256, rounds=1, max_rounds=1,
                                    precisions=("fp32",))
    measured = {(row["measure"], row["impl"], row["precision"]) for row in result["rows"]}
    assert {("train step", "gptcore", "fp32"), ("train step", "hf", "fp32"), ("eval forward", "gptcore", "fp32"),
            ("greedy generate", "gptcore", "int8"), ("greedy generate", "hf", "fp32")} <= measured
    table = gpu_check.format_table(result)
    assert table.startswith("Machine: ") and "| train step | 256 | 2 | fp32 |" in table


def test_the_recipes_first_steps_run_through_the_trainer_from_shards_on_the_cpu(tmp_path):
    """Part 8 with the model and batch scaled down (the card runs the recipe's own: 124M, 64 x 1,024 x 8)."""
    scaled = {"model.preset": "tiny", "model.context_length": 64, "train.batch_size": 2, "train.grad_accum_steps": 2,
              "train.compile": False, "train.precision": "fp32"}
    row = gpu_check.recipe_throughput("cpu", 1.0, 4, tmp_path, **scaled)
    assert row["tokens_per_step"] == 2 * 2 * 64 and row["steps"] == 4 and row["precision"] == "fp32"
    assert row["tokens_per_second"] > 0 and 0 < row["mfu"] < 1
    assert len(list(tmp_path.glob("train_*.bin"))) == 10
