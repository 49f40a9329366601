"""End to end on the tiny preset: the preference (DPO) pipeline after the pretraining and instruction ones, its
metrics beside its params in `dvc exp show`, its MLflow run (curves, the responses before and after), the
registered model served over HTTP."""

import json

import pytest

from conftest import Server, free_port, http, make_project, mlflow_client, run, store_env
from gptcore.cli import main
from gptcore.params import read_yaml, render, validate

pytestmark = pytest.mark.slow
INSTRUCTION = "Rewrite the sentence in passive voice."


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_dir):
    root = make_project(tmp_path_factory.mktemp("preference"))
    values = validate(read_yaml(root / "params.yaml")).values
    # a context the prompts fit in (the tiny project's 32 would cut them all); a few steps of each fine-tuning
    values["model"]["context_length"] = 192
    values["instruct_train"].update(max_steps=4, eval_freq=4)
    values["preference_train"].update(max_steps=6, eval_freq=3)
    values["preference"].update(max_new_tokens=8)
    (root / "params.yaml").write_text(render(values))
    run(["dvc", "repro", "stages/preference/dvc.yaml"], root)  # builds the pretraining and instruction stages first
    return root


def test_the_pipeline_tunes_the_instruction_model_and_reports_rewards_beside_its_params(project):
    splits = json.loads((project / "data" / "preference" / "splits" / "meta.json").read_text())
    assert splits["entries"] == {"train": 935, "validation": 55, "test": 110}
    answered = json.loads((project / "data" / "preference" / "responses" / "responses.json").read_text())
    assert len(answered) == 110 and {"chosen", "rejected", "reference_response", "policy_response"} <= set(answered[0])
    assert "**Before DPO:**" in (project / "data" / "preference" / "responses" / "responses.md").read_text()
    metrics = json.loads((project / "metrics" / "preference.json").read_text())
    assert 0 <= metrics["test_reward_accuracy"] <= 1 and metrics["responses"] == 110
    assert {"test_loss", "test_reward_margin", "policy_rouge_l_chosen", "reference_rouge_l_rejected"} <= set(metrics)
    info = json.loads((project / "data" / "preference" / "model" / "instruct.json").read_text())
    assert info["base"] == "data/instruct/model" and "### Response:" in info["template"]["response"]
    header = run(["dvc", "exp", "show", "--csv"], project).splitlines()[0].split(",")
    assert {"test_reward_margin", "test_reward_accuracy", "preference.beta", "preference_train.peak_lr"} <= set(header)

    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("gptcore-preference")
    (tuned,) = client.search_runs([experiment.experiment_id], "tags.task = 'preference'")
    steps = [m.step for m in client.get_metric_history(tuned.info.run_id, "eval/val_reward_margin")]
    assert steps == [1, 4, 6]  # every eval_freq steps from step 1, and the last
    assert {"eval/train_loss", "eval/val_loss", "eval/val_chosen_reward", "eval/val_rejected_reward",
            "evaluate/test_reward_accuracy"} <= set(tuned.data.metrics)
    assert tuned.data.metrics["evaluate/test_reward_margin"] == metrics["test_reward_margin"]
    artifacts = {a.path for a in client.list_artifacts(tuned.info.run_id, "evaluation")}
    assert {"evaluation/responses.json", "evaluation/responses.md"} <= artifacts


def test_the_registered_preference_model_serves_what_gptcore_instruct_prints(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    capsys.readouterr()
    assert main(["instruct", INSTRUCTION, "--model", "data/preference/model"]) == 0
    expected = capsys.readouterr().out.rstrip("\n")
    port = free_port()
    serve = ["mlflow", "models", "serve", "-m", "models:/gptcore-preference/latest", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)]
    with Server(serve, port, project, store_env(project)) as url:
        (answer,) = http(f"{url}/invocations", {"dataframe_records": [{"instruction": INSTRUCTION}]})["predictions"]
    assert answer["response"] == expected


def test_a_base_without_an_instruction_template_is_refused_before_any_work(project):
    result = run_failing(["python", "stages/finetune.py", "--task", "preference", "--params", "params.yaml",
                          "--splits", "data/preference/splits", "--model", "/tmp/unused", "--metrics", "/tmp/m.json",
                          "--plots", "/tmp"], project, {"preference": {"init_from": "models"}})
    assert result == ("error: preference.init_from = 'models' holds no instruction model (instruct.json: its "
                      "template): DPO tunes one; give the folder the instruction pipeline wrote (data/instruct/model)")


def run_failing(command, project, changes) -> str:
    """The one line a stage prints on stderr, run with params changed in a copy of params.yaml."""
    import subprocess

    values = validate(read_yaml(project / "params.yaml")).values
    for section, keys in changes.items():
        values[section].update(keys)
    (project / "changed.yaml").write_text(render(values))
    command = [part if part != "params.yaml" else "changed.yaml" for part in command]
    result = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and not result.stdout.strip(), result
    return result.stderr.strip()
