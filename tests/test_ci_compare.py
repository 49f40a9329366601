"""CI's reproduce-and-compare (.ci/compare_metrics.py) on made-up committed and fresh metrics."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_metrics", REPO / ".ci" / "compare_metrics.py")
compare_metrics = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_metrics)


def metrics(precision: str, train_loss: float, steps: int = 90) -> dict:
    runtime = {"precision": precision, "device": "cpu", "cpu": "Some CPU", "threads": 2}
    return {"metrics/train.json": {"train_loss": train_loss, "steps": steps,
                                   "runtime": runtime},
            "metrics/eval.json": {"val_loss": 6.0, "val_perplexity": 403.4}}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """Committed metrics from `committed`, fresh ones written to tmp_path/metrics/."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()

    def lay_out(committed: dict, fresh: dict):
        monkeypatch.setattr(compare_metrics, "committed", lambda path: json.loads(json.dumps(committed[path])))
        for path, values in fresh.items():
            (tmp_path / path).write_text(json.dumps(values))

    return lay_out


def test_bf16_metrics_on_a_machine_that_emulates_bf16_are_reproduced_in_fp32_and_said_so(workspace, monkeypatch,
                                                                                       capsys):
    workspace(metrics("bf16", 2.0), {})
    monkeypatch.setattr("gptcore.model.runtime.fast_bf16", lambda device: False)
    assert compare_metrics.reproduction_precision() == "fp32"
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "made in bf16 on Some CPU" in line and "compares only steps, tokens_seen, parameters" in line
    monkeypatch.setattr("gptcore.model.runtime.fast_bf16", lambda device: True)
    assert compare_metrics.reproduction_precision() == "bf16"
    workspace(metrics("fp32", 2.0), {})
    assert compare_metrics.reproduction_precision() == "fp32"


def test_losses_compare_within_their_precisions_tolerance_and_counts_exactly(workspace, capsys):
    tolerance = compare_metrics.RELATIVE_TOLERANCE["fp32"]
    workspace(metrics("fp32", 2.0), metrics("fp32", 2.0 * (1 + tolerance / 2)))
    assert compare_metrics.compare() == 0
    workspace(metrics("fp32", 2.0), metrics("fp32", 2.0 * (1 + tolerance * 2)))
    assert compare_metrics.compare() == 1
    workspace(metrics("fp32", 2.0), metrics("fp32", 2.0, steps=89))
    assert compare_metrics.compare() == 1
    assert "FAIL metrics/train.json steps" in capsys.readouterr().out


def test_losses_made_at_another_precision_are_printed_not_compared(workspace, capsys):
    workspace(metrics("bf16", 2.0), metrics("fp32", 2.5))
    assert compare_metrics.compare() == 0
    assert "train_loss: committed 2, reproduced 2.5 (not compared)" in capsys.readouterr().out
