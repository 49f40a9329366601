"""End to end on the tiny preset: the instruction pipeline after the pretraining one, its responses, its DVC
metrics and MLflow run, the judge (reachable and not) and the served instruction model."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import JudgeServer, Server, free_port, http, make_project, mlflow_client, refusal, run, store_env
from gptcore.cli import main
from gptcore.params import read_yaml, render, validate

pytestmark = pytest.mark.slow
INSTRUCTION, INPUT = "Rewrite the sentence in passive voice.", "The chef cooks the meal."
EVALUATE = ["python", "stages/evaluate_instructions.py", "--params", "params.yaml", "--model", "data/instruct/model",
            "--splits", "data/instruct/splits", "--responses", "data/instruct/responses", "--metrics",
            "metrics/instruct.json", "--scores", "data/instruct/scores.json"]


def set_params(root, **sections):
    values = validate(read_yaml(root / "params.yaml")).values
    for section, changes in sections.items():
        values[section].update(changes)
    (root / "params.yaml").write_text(render(values))


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_dir):
    root = make_project(tmp_path_factory.mktemp("instruct"))
    # a context the prompts fit in (the tiny project's 32 would cut them all)
    set_params(root, model={"context_length": 128}, instruct_train={"max_steps": 12, "eval_freq": 6},
               instruct={"max_new_tokens": 12})
    run(["dvc", "repro", "stages/instruct/dvc.yaml"], root)  # builds the pretraining stages it starts from
    return root


def test_the_pipeline_writes_the_books_splits_responses_and_metrics_in_one_tracked_run(project):
    meta = json.loads((project / "data" / "instruct" / "splits" / "meta.json").read_text())
    assert meta["entries"] == {"train": 935, "validation": 55, "test": 110}
    answered = json.loads((project / "data" / "instruct" / "responses" / "responses.json").read_text())
    assert len(answered) == 110 and set(answered[0]) == {"instruction", "input", "output", "model_response"}
    markdown = (project / "data" / "instruct" / "responses" / "responses.md").read_text()
    assert answered[0]["instruction"] in markdown and "**Model:**" in markdown
    metrics = json.loads((project / "metrics" / "instruct.json").read_text())
    assert metrics["responses"] == 110 and metrics["test_loss"] > 0 and 0 <= metrics["rouge_l"] <= 1
    assert "judge_score" not in metrics  # off by default
    assert all(isinstance(value, (int, float)) for value in metrics.values())  # numbers only: no runtime
    header = run(["dvc", "exp", "show", "--csv"], project).splitlines()[0].split(",")
    assert {"test_loss", "rouge_l", "instruct_train.peak_lr"} <= set(header)
    assert not [name for name in header if name.split(":")[-1].startswith("runtime.") or name.startswith("metrics/")]

    client = mlflow_client(project)
    # its own experiment (classify.experiment / instruct.experiment): its curves never share a chart with the
    # pretraining run's
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    assert not client.search_runs([experiments["gptcore"]], "tags.task = 'instruction'")
    experiment = client.get_experiment(experiments["gptcore-instruct"])
    (instruct_run,) = client.search_runs([experiment.experiment_id], "tags.task = 'instruction'")
    assert instruct_run.data.metrics["evaluate/rouge_l"] == metrics["rouge_l"]
    assert {"eval/train_loss", "eval/val_loss"} <= set(instruct_run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(instruct_run.info.run_id, "evaluation")}
    assert {"evaluation/responses.json", "evaluation/responses.md", "evaluation/scores.json"} <= artifacts


def test_the_judge_scores_the_responses_and_an_unreachable_one_stops_in_one_line(project):
    with JudgeServer() as server:
        url = f"{server.url}/v1/chat/completions"
        set_params(project, judge={"enabled": True, "api": "openai", "url": url})
        run(EVALUATE, project)
    metrics = json.loads((project / "metrics" / "instruct.json").read_text())
    scores = [row["judge_score"] for row in json.loads((project / "data" / "instruct" / "scores.json").read_text())]
    assert metrics["judge_scored"] == len(scores) == 110
    assert metrics["judge_score"] == pytest.approx(sum(scores) / 110)  # the server's scores: word counts
    assert len(server.requests) == 110

    result = subprocess.run(EVALUATE, cwd=project, capture_output=True, text=True)  # the server is gone now
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: the judge at {url} is unreachable " +
                                                  result.stderr.split("is unreachable ", 1)[1].strip()]
    assert "set judge.enabled: false (the responses are kept)" in result.stderr
    assert (project / "data" / "instruct" / "responses" / "responses.json").is_file()
    set_params(project, judge={"enabled": False})


def test_an_unreachable_judge_stops_the_fine_tuning_before_it_trains(project):
    """Fine-tuning and generating the responses came first, then the evaluate stage found the judge down."""
    set_params(project, judge={"enabled": True, "api": "openai", "url": "http://127.0.0.1:9/v1/chat/completions"})
    try:
        finetune = ["python", "stages/finetune.py", "--task", "instruct", "--params", "params.yaml", "--splits",
                    "data/instruct/splits", "--model", "data/instruct/refused", "--metrics", "refused.json", "--plots",
                    "refused-plots"]
        result = subprocess.run(finetune, cwd=project, capture_output=True, text=True)
    finally:
        set_params(project, judge={"enabled": False})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: the judge at http://127.0.0.1:9/v1/chat/completions is unreachable")
    assert not (project / "data" / "instruct" / "refused").exists() and not (project / "refused.json").exists()


def test_the_registered_instruction_model_serves_what_gptcore_instruct_prints(project, capsys, monkeypatch):
    import mlflow

    monkeypatch.chdir(project)
    capsys.readouterr()
    assert main(["instruct", INSTRUCTION, "--input", INPUT]) == 0
    expected = capsys.readouterr().out.rstrip("\n")
    assert main(["instruct", INSTRUCTION]) == 0
    without_input = capsys.readouterr().out.rstrip("\n")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_env(project)["MLFLOW_TRACKING_URI"])
    loaded = mlflow.pyfunc.load_model("models:/gptcore-instruct/1")
    predicted = loaded.predict(pd.DataFrame([{"instruction": INSTRUCTION, "input": INPUT}]))["response"].tolist()
    assert predicted == [expected]
    port = free_port()
    serve = ["mlflow", "models", "serve", "-m", "models:/gptcore-instruct/latest", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)]
    with Server(serve, port, project, store_env(project)) as url:
        answers = http(f"{url}/invocations", {"dataframe_records": [{"instruction": INSTRUCTION, "input": INPUT},
                                                                    {"instruction": INSTRUCTION}]})["predictions"]
    assert [row["response"] for row in answers] == [expected, without_input]


def test_the_served_instruction_model_takes_the_sampler_params_and_refuses_a_prompt_longer_than_the_context(
        project, capsys, monkeypatch):
    """A prompt longer than the context was cut to its last tokens (losing the template) and answered with HTTP 200
    and one token; request params were dropped with a warning; a null input was refused in the data file."""
    monkeypatch.chdir(project)
    capsys.readouterr()
    assert main(["instruct", INSTRUCTION, "--max-new-tokens", "2"]) == 0
    two_tokens = capsys.readouterr().out.rstrip("\n")
    port = free_port()
    serve = ["mlflow", "models", "serve", "-m", "models:/gptcore-instruct/latest", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)]
    with Server(serve, port, project, store_env(project)) as url:
        (short,) = http(f"{url}/invocations", {"dataframe_records": [{"instruction": INSTRUCTION, "input": None}],
                                                "params": {"max_new_tokens": 2}})["predictions"]
        sampled = [http(f"{url}/invocations", {"dataframe_records": [{"instruction": INSTRUCTION}],
                                                "params": {"temperature": 1.5, "seed": 7}})["predictions"]
                   for _ in range(2)]
        refused = [refusal(f"{url}/invocations", body) for body in (
            {"dataframe_records": [{"instruction": "Summarise this. " + "word " * 150}]},
            {"dataframe_records": [{"instruction": INSTRUCTION}], "params": {"temperature": -3.0}})]
    assert short["response"] == two_tokens and sampled[0] == sampled[1]
    for (status, body), reason in zip(refused, ("row 0's prompt (the template with its instruction and input) is",
                                                "temperature = -3.0 is invalid")):
        assert status == 400 and reason in body["message"] and "stack_trace" not in body, body
    assert "longer than the model's context of 128 tokens; shorten it" in refused[0][1]["message"]


def test_the_export_stage_writes_a_gguf_and_hugging_face_folder_when_asked_one_copy_shared_with_mlflow(project):
    """Off by default (an empty output); `dvc exp run -S instruct_export...` runs only the export stage and leaves
    the GGUF with its Modelfile and the Hugging Face folder, whose files the model's MLflow run holds as hard links."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export = project / "data" / "instruct" / "export"
    assert export.is_dir() and not any(export.iterdir())
    ran = run(["dvc", "exp", "run", "stages/instruct/dvc.yaml", "-S", "instruct_export.gguf=q8_0",
               "-S", "instruct_export.hugging_face=true"], project)
    assert "Running stage 'stages/instruct/dvc.yaml:export-instructions'" in ran
    assert "Running stage 'stages/instruct/dvc.yaml:finetune-instructions'" not in ran
    reader = gguf.GGUFReader(export / "instruct-q8_0.gguf")
    assert reader.get_field("general.architecture").contents() == "gpt2"
    assert "ns.instruction" in reader.get_field("tokenizer.chat_template").contents()
    assert {tensor.tensor_type.name for tensor in reader.tensors if tensor.name.endswith("attn_qkv.weight")} == {"Q8_0"}
    modelfile = (export / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./instruct-q8_0.gguf\n") and "### Response:" in modelfile
    assert "### Response:" in AutoTokenizer.from_pretrained(export / "hugging_face").chat_template
    assert AutoModelForCausalLM.from_pretrained(export / "hugging_face").config.n_ctx == 128

    client = mlflow_client(project)
    experiment = client.get_experiment_by_name("gptcore-instruct")
    (instruct_run,) = client.search_runs([experiment.experiment_id], "tags.task = 'instruction'")
    logged = {a.path for a in client.list_artifacts(instruct_run.info.run_id, "export")}
    assert logged == {"export/instruct-q8_0.gguf", "export/Modelfile", "export/hugging_face"}
    artifacts = project / "mlruns" / "artifacts"
    (linked,) = artifacts.rglob("export/instruct-q8_0.gguf")
    assert linked.samefile(export / "instruct-q8_0.gguf")  # one copy: DVC's cache, the workspace and MLflow
    weights = Path("hugging_face", "model.safetensors")
    assert (linked.parent / weights).samefile(export / weights)
