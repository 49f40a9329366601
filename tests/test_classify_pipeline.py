"""End to end on the tiny preset: the classifier pipeline after the pretraining one, its DVC metrics, its
MLflow run (curves, confusion matrix, the registered model) and the served classifier."""

import json

import pandas as pd
import pytest

from conftest import Server, free_port, http, make_project, mlflow_client, refusal, run, store_env
from gptcore.cli import main
from gptcore.params import read_yaml, render, validate

pytestmark = pytest.mark.slow
SPAM = "WINNER!! You have won a 1000 cash prize. Call 09061701461 to claim now"


@pytest.fixture(scope="module")
def project(tmp_path_factory, shared_dir):
    root = make_project(tmp_path_factory.mktemp("classify"))
    values = validate(read_yaml(root / "params.yaml")).values
    values["classify_train"].update(epochs=2, eval_freq=40)
    (root / "params.yaml").write_text(render(values))
    run(["dvc", "repro", "stages/classify/dvc.yaml"], root)  # builds the pretraining stages it starts from
    return root


def test_the_pipeline_writes_the_books_splits_its_metrics_and_one_tracked_run(project):
    meta = json.loads((project / "data" / "classifier" / "splits" / "meta.json").read_text())
    assert meta["rows"] == {"train": 1045, "validation": 149, "test": 300}
    metrics = json.loads((project / "metrics" / "classify.json").read_text())
    assert {"train_accuracy", "val_accuracy", "test_accuracy", "parameters", "trainable_parameters"} <= set(metrics)
    assert 0.5 < metrics["test_accuracy"] <= 1 and metrics["trainable_parameters"] < metrics["parameters"]
    confusion = pd.read_csv(project / "data" / "classifier" / "report" / "confusion_matrix.csv", index_col=0)
    assert confusion.to_numpy().sum() == 300 and list(confusion.columns) == ["ham", "spam"]
    report = json.loads((project / "data" / "classifier" / "report" / "evaluation.json").read_text())
    assert {"test_loss", "test_f1_spam", "runtime"} <= set(report) and "runtime" not in metrics
    header = run(["dvc", "exp", "show", "--csv"], project).splitlines()[0].split(",")
    assert {"test_accuracy", "val_accuracy", "classify_train.peak_lr"} <= set(header)  # named once: bare names
    assert not [name for name in header if name.split(":")[-1].startswith("runtime.")]  # a tag, not a metric

    client = mlflow_client(project)
    # its own experiment (classify.experiment / instruct.experiment): its curves never share a chart with the
    # pretraining run's
    experiments = {e.name: e.experiment_id for e in client.search_experiments()}
    assert not client.search_runs([experiments["gptcore"]], "tags.task = 'classification'")
    experiment = client.get_experiment(experiments["gptcore-classify"])
    (classifier_run,) = client.search_runs([experiment.experiment_id], "tags.task = 'classification'")
    assert classifier_run.data.metrics["evaluate/test_accuracy"] == metrics["test_accuracy"]
    assert {"eval/train_loss", "eval/val_loss", "eval/train_accuracy", "eval/val_accuracy"} <= \
        set(classifier_run.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(classifier_run.info.run_id, "evaluation")}
    assert artifacts == {"evaluation/evaluation.json", "evaluation/confusion_matrix.csv", "evaluation/per_class.csv"}


def test_the_registered_classifier_serves_what_gptcore_classify_prints(project, capsys, monkeypatch):
    import mlflow

    monkeypatch.chdir(project)
    capsys.readouterr()
    assert main(["classify", SPAM]) == 0
    label, probabilities = capsys.readouterr().out.rstrip("\n").split("\t")
    expected = {"label": label, **{f"probability_{name}": float(p) for name, p in
                                   zip(probabilities.split()[::2], probabilities.split()[1::2])}}

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store_env(project)["MLFLOW_TRACKING_URI"])
    loaded = mlflow.pyfunc.load_model("models:/gptcore-classifier/1")
    (predicted,) = loaded.predict(pd.DataFrame({"text": [SPAM]})).to_dict("records")
    port = free_port()
    serve = ["mlflow", "models", "serve", "-m", "models:/gptcore-classifier/latest", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)]
    with Server(serve, port, project, store_env(project)) as url:
        (answer,) = http(f"{url}/invocations", {"dataframe_records": [{"text": SPAM}]})["predictions"]
    for row in (predicted, answer):
        assert row["label"] == expected["label"] and set(row) == set(expected)
        assert all(abs(row[k] - expected[k]) < 5e-5 for k in expected if k != "label")  # printed to 4 places


def test_the_served_classifier_names_a_number_as_not_text(project):
    """A number in `text` was answered "text 0 is empty"."""
    port = free_port()
    serve = ["mlflow", "models", "serve", "-m", "models:/gptcore-classifier/latest", "--env-manager", "local",
             "-h", "127.0.0.1", "-p", str(port)]
    with Server(serve, port, project, store_env(project)) as url:
        status, body = refusal(f"{url}/invocations", {"dataframe_records": [{"text": 5}]})
    assert status == 400 and "text 0 is 5, not text; give a text to classify" in body["message"], body


def test_lora_is_one_experiment_away(project):
    """The README's command; last here, since it leaves the LoRA classifier in the workspace."""
    full = json.loads((project / "metrics" / "classify.json").read_text())
    run(["dvc", "exp", "run", "stages/classify/dvc.yaml", "-n", "lora16", "-S", "classify_lora.rank=16"], project)
    lora = json.loads((project / "metrics" / "classify.json").read_text())
    assert lora["trainable_parameters"] < full["trainable_parameters"]
    client = mlflow_client(project)
    (lora_run,) = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                     "attributes.run_name = 'lora16'")
    assert lora_run.data.params["classify_lora.rank"] == "16" and lora_run.data.tags["task"] == "classification"
