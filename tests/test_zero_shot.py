"""Zero-shot benchmarks (gptcore.evaluation.zero_shot) against lm-evaluation-harness and build-nanogpt's
HellaSwag scoring.

Every comparison runs fp32 on both sides: the tolerances are fp32's (the two implementations sum the same
log-probabilities in other orders of operations).
"""

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gptcore.cli import main
from gptcore.errors import ConfigError, GptcoreError
from gptcore.evaluation.zero_shot import (ZeroShotProbe, cut_warning, encode_pair, evaluate_task, hellaswag_prompt,
                                          load_task, score_requests)
from gptcore.formats.model_folder import save_model
from gptcore.model.gpt import GPT, ModelConfig
from gptcore.model.runtime import setup_runtime
from gptcore.params import ParamsError, validate
from gptcore.settings.train import TrainConfig
from gptcore.settings.zero_shot import ZeroShotConfig
from gptcore.tasks.language_modeling import LanguageModeling
from gptcore.tracking.metrics import TrackingCallback
from gptcore.training.callbacks import PrintProgress
from gptcore.training.trainer import Trainer

CONTEXT = 64
FP32 = setup_runtime("cpu", "fp32")
# HellaSwag's validation format (rowanz/hellaswag), with WikiHow's bracketed artifacts, a lower-case ctx_b and
# endings of unequal lengths, so that the summed, per-token and per-character rankings can differ
HELLASWAG = [
    {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
     "ctx": "A man is sitting on a roof. he", "label": 3, "split": "val", "split_type": "indomain",
     "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                 "is holding a rubik's cube.", "starts pulling up roofing on a roof."]},
    {"ind": 92, "activity_label": "Clean and jerk", "ctx_a": "A lady walks to a barbell. She bends down and "
     "grabs the pole.", "ctx_b": "the lady", "ctx": "A lady walks to a barbell. She bends down and grabs the "
     "pole. the lady", "label": 3, "split": "val", "split_type": "zeroshot",
     "endings": ["swings and lands in her arms.", "pulls the barbell forward.", "pulls a rope attached to the "
                 "barbell.", "stands and lifts the weight over her head."]},
    {"ind": 106, "activity_label": "Home and Garden", "ctx_a": "[header] How to clean a vacuum filter [title] "
     "Unplug the vacuum. [step] Always unplug it first.", "ctx_b": "you", "ctx": "[header] How to clean a vacuum "
     "filter [title] Unplug the vacuum. [step] Always unplug it first. you", "label": 0, "split": "val",
     "split_type": "indomain",
     "endings": ["can then take the filter out [substeps] and tap it over a bin.", "should use a wet cloth.",
                 "will see the dust.", "need to [title] wait a day."]},
    {"ind": 7, "activity_label": "Baking cookies", "ctx_a": "A kitchen is shown with a bowl of dough.",
     "ctx_b": "a woman", "ctx": "A kitchen is shown with a bowl of dough. a woman", "label": 1, "split": "val",
     "split_type": "indomain",
     "endings": ["sings.", "rolls the dough into small balls and places them on a tray.", "leaves.",
                 "turns the oven off and on again while the camera pans around the kitchen slowly."]},
]


def train_tiny(tokens: np.ndarray) -> GPT:
    """The tiny preset trained 100 steps on tokens (nanoGPT's beta2 0.95 leaves the unigram plateau sooner): a
    small trained model, whose greedy next words depend on the context."""
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny", context_length=CONTEXT, drop_rate=0.0))
    config = TrainConfig(max_steps=100, batch_size=4, peak_lr=3e-3, warmup_steps=5, beta2=0.95, weight_decay=0.0,
                         cosine_decay=False, eval_freq=100, eval_iter=1, sample_tokens=0, precision="fp32",
                         device="cpu", windows="random", checkpoint_every=0)
    Trainer(model, config, LanguageModeling(tokens, tokens[:CONTEXT * 2 + 2])).fit()
    return model.eval()


@pytest.fixture(scope="module")
def verdict(shared_dir):
    return (shared_dir / "data" / "the-verdict.txt").read_text()


@pytest.fixture(scope="module")
def trained(tokenizer, verdict):
    return train_tiny(np.array(tokenizer.encode(verdict), dtype=np.uint16))


@pytest.fixture(scope="module")
def lambada_file(tmp_path_factory, shared_dir, trained, tokenizer, verdict):
    """120 of OpenAI's passages, then 30 of 40 words of the-verdict whose last word is the trained model's own
    greedy next token (a word after a space): the harness and gptcore must both find those greedy."""
    lines = (shared_dir / "data" / "lambada_test.jsonl").read_text().splitlines()[:120]
    passages = [json.loads(line)["text"] for line in lines]
    words = verdict.split(" ")
    for end in range(40, len(words), 3):
        context = " ".join(words[end - 40:end])
        with torch.no_grad():
            token = int(trained(torch.tensor([tokenizer.encode(context)[-CONTEXT:]]))[0][0, -1].argmax())
        word = tokenizer.decode([token])
        if word.startswith(" ") and word[1:].isalpha() and encode_pair(tokenizer, context, word).continuation == [token]:
            passages.append(context + word)
        if len(passages) == 150:
            break
    assert len(passages) == 150
    path = tmp_path_factory.mktemp("lambada") / "lambada_test.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in passages))
    return path


@pytest.fixture(scope="module")
def hellaswag_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hellaswag") / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(example) + "\n" for example in HELLASWAG))
    return path


def local(**sources) -> ZeroShotConfig:
    return ZeroShotConfig(**{f"{task}_source": str(path) for task, path in sources.items()},
                          **{f"{task}_sha256": None for task in sources})


def test_pairs_are_encoded_as_the_harness_encodes_them(tokenizer):
    request = encode_pair(tokenizer, "the end of the  ", "story")  # trailing spaces go to the continuation
    assert request.context == tokenizer.encode("the end of the")
    assert tokenizer.decode(request.continuation) == "  story"
    assert request.context + request.continuation == tokenizer.encode("the end of the  story")
    assert encode_pair(tokenizer, "", " Hello").context == [tokenizer.eot_id]  # an empty context: <|endoftext|>


def test_scores_equal_a_full_forward_pass_at_any_batch_size(trained, lambada_file, tokenizer):
    """The head runs only at the continuation's positions, in batches of right-padded requests; the numbers are
    those of the full forward pass of each request alone (fp32: within 1e-5)."""
    task = load_task("lambada", local(lambada=lambada_file), tokenizer, 40)
    one, greedy_one, _ = score_requests(trained, task.requests, FP32, 1)
    batched, greedy_batched, _ = score_requests(trained, task.requests, FP32, 16)
    assert greedy_one == greedy_batched
    assert batched == pytest.approx(one, rel=1e-5)
    for request, score in zip(task.requests[:10], one):
        window = (request.context + request.continuation)[-(CONTEXT + 1):]
        with torch.no_grad():
            logits, _ = trained(torch.tensor([window[:-1]]))
        log_probs = F.log_softmax(logits[0, -len(request.continuation):], dim=-1)
        assert score == pytest.approx(float(log_probs.gather(1, torch.tensor(request.continuation)[:, None]).sum()),
                                      rel=1e-5)


@pytest.mark.slow
def test_lambada_and_hellaswag_equal_lm_evaluation_harness(trained, lambada_file, hellaswag_file, tmp_path,
                                                           tokenizer):
    """gptcore's numbers against lm-evaluation-harness's lambada_openai and hellaswag through its HFLM, on the
    same model exported with `gptcore export-hf`: accuracies equal, perplexity within 1e-4 relative, and each
    request's log-likelihood and greedy flag."""
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness (pip install 'lm_eval[hf]') is not installed")
    from gptcore.evaluation.harness import run_harness

    save_model(trained, tmp_path / "model")
    assert main(["export-hf", str(tmp_path / "model"), str(tmp_path / "hf")]) == 0
    config = local(lambada=lambada_file, hellaswag=hellaswag_file)

    lambada = load_task("lambada", config, tokenizer, None)
    ours = evaluate_task(trained, lambada, FP32, 16)
    reference = run_harness(tmp_path / "hf", "lambada", lambada_file)
    assert ours["cut"] > 0 and ours["examples"] == 150  # the 64-token context cuts passages, as the harness does
    assert ours["acc"] == reference["metrics"]["acc"] >= 30 / 150
    assert ours["perplexity"] == pytest.approx(reference["metrics"]["perplexity"], rel=1e-4)
    lls, greedy, _ = score_requests(trained, lambada.requests, FP32, 16)
    assert greedy == [flag for _, flag in reference["requests"]]
    assert lls == pytest.approx([ll for ll, _ in reference["requests"]], rel=1e-4)

    hellaswag = load_task("hellaswag", config, tokenizer, None)
    ours = evaluate_task(trained, hellaswag, FP32, 16)
    reference = run_harness(tmp_path / "hf", "hellaswag", hellaswag_file)
    assert ours["acc"] == reference["metrics"]["acc"]
    assert ours["acc_norm_chars"] == reference["metrics"]["acc_norm"]  # the harness normalises by characters
    lls, _, _ = score_requests(trained, hellaswag.requests, FP32, 16)
    assert lls == pytest.approx([ll for ll, _ in reference["requests"]], rel=1e-4)


def build_nanogpt_hellaswag(model, tokenizer, examples) -> dict:
    """build-nanogpt's hellaswag.py: ctx and each " " + ending encoded apart, the ending's summed and mean
    cross-entropy, the lowest wins."""
    right = {"acc": 0, "acc_norm": 0}
    for example in examples:
        context = tokenizer.encode(example["ctx"])
        sums, means = [], []
        for ending in example["endings"]:
            ending_ids = tokenizer.encode(" " + ending)
            with torch.no_grad():
                logits, _ = model(torch.tensor([context + ending_ids]))
            losses = F.cross_entropy(logits[0, len(context) - 1:-1], torch.tensor(ending_ids), reduction="none")
            sums.append(float(losses.sum()))
            means.append(float(losses.mean()))
        right["acc"] += int(np.argmin(sums)) == example["label"]
        right["acc_norm"] += int(np.argmin(means)) == example["label"]
    return {metric: count / len(examples) for metric, count in right.items()}


def test_hellaswag_in_build_nanogpts_context_scores_as_build_nanogpt(trained, hellaswag_file, tokenizer):
    config = replace(local(hellaswag=hellaswag_file), hellaswag_context="ctx")
    ours = evaluate_task(trained, load_task("hellaswag", config, tokenizer, None), FP32, 3)
    reference = build_nanogpt_hellaswag(trained, tokenizer, HELLASWAG)
    assert (ours["acc"], ours["acc_norm"]) == (reference["acc"], reference["acc_norm"])
    assert ours["examples"] == 4 and ours["precision"] == "fp32" and ours["cut"] == 0


def test_the_harness_prompt_cleans_wikihow_artifacts_and_capitalises_ctx_b():
    context, endings = hellaswag_prompt(HELLASWAG[2], "harness")
    assert context == "Home and Garden: How to clean a vacuum filter. Unplug the vacuum. Always unplug it first. You"
    assert endings[0] == "can then take the filter out and tap it over a bin."
    assert hellaswag_prompt(HELLASWAG[0], "ctx") == (HELLASWAG[0]["ctx"], HELLASWAG[0]["endings"])


def test_cut_examples_are_counted_and_said(trained, lambada_file, tokenizer):
    task = load_task("lambada", local(lambada=lambada_file), tokenizer, 20)
    lengths = [len(r.context) + len(r.continuation) for r in task.requests]
    assert task.cut(CONTEXT) == sum(length > CONTEXT + 1 for length in lengths) > 0
    assert cut_warning(task, CONTEXT) == (f"lambada: {task.cut(CONTEXT)} of 20 examples are longer than the model's "
                                          f"context of {CONTEXT} tokens; their oldest tokens are left out (as "
                                          "lm-evaluation-harness does)")
    assert cut_warning(task, 1024) is None


def test_cli_prints_the_table_and_writes_the_results(trained, lambada_file, tmp_path, capsys):
    save_model(trained, tmp_path / "model")
    out = tmp_path / "results.json"
    assert main(["eval", "--model", str(tmp_path / "model"), "--limit", "12", "--lambada-source", str(lambada_file),
                 "--lambada-sha256", "null", "--precision", "fp32", "--json", str(out)]) == 0
    printed, warned = capsys.readouterr()
    results = json.loads(out.read_text())
    assert results["lambada"]["examples"] == 12 and results["lambada"]["precision"] == "fp32"
    assert f"lambada    perplexity      {results['lambada']['perplexity']:>12.4f}" in printed
    assert "12 examples" in printed and f"warning: lambada: {results['lambada']['cut']} of 12 examples" in warned


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "lambada,hellaswg"], "--tasks: 'hellaswg' is not a zero-shot task; the known ones are lambada, "
                                      "hellaswag"),
    (["--limit", "0"], "--limit = 0 is invalid; it must be an integer >= 1 or null"),
    (["--tasks", "hellaswag"], "--hellaswag-sha256 is missing; a URL source"),
])
def test_cli_names_the_bad_option(argv, message, capsys):
    assert main(["eval", *argv]) == 1
    assert message in capsys.readouterr().err


def test_params_name_the_bad_key_before_any_work():
    with pytest.raises(ParamsError, match=r"zero_shot.tasks: 'lambda' is not a zero-shot task; the known ones"):
        validate({"zero_shot": {"tasks": ["lambda"]}})
    with pytest.raises(ParamsError, match=r"zero_shot.train_limit = 0 is invalid"):
        validate({"zero_shot": {"train_limit": 0}})
    with pytest.raises(ParamsError, match=r"zero_shot.hellaswag_sha256 is missing"):
        validate({"zero_shot": {"train_tasks": ["hellaswag"]}})
    assert validate({"zero_shot": {"tasks": ["lambada"]}}).zero_shot.tasks == ["lambada"]


@pytest.mark.parametrize("task, content, message", [
    ("lambada", '{"ctx": "no text"}\n', "line 1 has no str 'text'; is it a lambada file?"),
    ("lambada", "plain text\n", "line 1 is not JSON"),
    ("lambada", '{"text": "oneword"}\n', "example 1 has no last word after a space to predict"),
    ("hellaswag", '{"text": "a passage"}\n', "line 1 has no str 'ctx'; is it a hellaswag file?"),
    ("hellaswag", json.dumps({**HELLASWAG[0], "label": 4}) + "\n", "example 1: its endings must be two or more"),
    ("lambada", "", "holds no examples"),
])
def test_a_file_not_in_the_tasks_format_is_named_with_its_line(task, content, message, tmp_path, tokenizer):
    path = tmp_path / "data.jsonl"
    path.write_text(content)
    with pytest.raises(GptcoreError, match=message) as raised:
        load_task(task, local(**{task: path}), tokenizer, None)
    assert str(path) in str(raised.value)


def test_a_model_that_cannot_score_the_requests_is_refused(tokenizer, tmp_path):
    small_vocabulary = GPT(ModelConfig.from_preset("tiny", vocab_size=1000))
    path = tmp_path / "lambada.jsonl"
    path.write_text(json.dumps({"text": "The dog chased the ball across the field"}) + "\n")
    task = load_task("lambada", local(lambada=path), tokenizer, None)
    with pytest.raises(ConfigError, match="the model's vocabulary holds 1,000 tokens"):
        evaluate_task(small_vocabulary, task, FP32, 4)
    path.write_text(json.dumps({"text": "It said " + "supercalifragilistic" * 3}) + "\n")
    task = load_task("lambada", local(lambada=path), tokenizer, None)
    with pytest.raises(ConfigError, match="continuation has .* tokens, more than the model's context of 4"):
        evaluate_task(GPT(ModelConfig.from_preset("tiny", context_length=4)), task, FP32, 4)
    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "classifier.json").write_text("{}")
    assert main(["eval", "--model", str(tmp_path / "classifier")]) == 1


def test_training_measures_the_tasks_every_n_steps_and_at_the_end(trained, lambada_file, tokenizer, capsys):
    config = replace(local(lambada=lambada_file), train_tasks=["lambada"], train_every=4, train_limit=8)
    probe = ZeroShotProbe(config, tokenizer, CONTEXT)
    tokens = np.array(tokenizer.encode("Every effort moves you forward, and every day a little. " * 40),
                      dtype=np.uint16)
    model = GPT(ModelConfig.from_preset("tiny", context_length=CONTEXT))
    train = TrainConfig(max_steps=10, warmup_steps=0, batch_size=2, eval_freq=5, eval_iter=1, sample_tokens=0,
                        precision="fp32", device="cpu", windows="random", checkpoint_every=0)
    logged = []
    tracker = SimpleNamespace(run_id="run", client=SimpleNamespace(
        log_batch=lambda run_id, metrics: logged.extend(metrics)))
    history = Trainer(model, train, LanguageModeling(tokens, tokens, probe),
                      callbacks=[PrintProgress(), TrackingCallback(tracker)]).fit()
    assert [record["step"] for record in history["zero_shot"]] == [4, 8, 10]
    last = history["zero_shot"][-1]
    expected = evaluate_task(model, load_task("lambada", config, tokenizer, 8), FP32, 16)
    assert (last["lambada_acc"], last["lambada_perplexity"]) == (expected["acc"], expected["perplexity"])
    curve = [(metric.step, metric.value) for metric in logged if metric.key == "zero_shot/lambada_perplexity"]
    assert curve == [(record["step"], record["lambada_perplexity"]) for record in history["zero_shot"]]
    assert "step      4 | zero-shot | lambada acc " in capsys.readouterr().out
    assert model.training  # measured in eval mode, handed back in training mode


def test_a_stage_measuring_no_task_depends_on_no_zero_shot_key():
    """The plan the train and evaluate stages depend on holds the keys their measurements read, so a task's source
    that neither measures changes nothing they depend on."""
    import yaml
    from pathlib import Path

    off = ZeroShotConfig()
    moved = ZeroShotConfig(lambada_source="/elsewhere/lambada.jsonl", lambada_sha256=None, batch_size=4)
    for during_training in (True, False):
        assert off.measured_settings(during_training) == moved.measured_settings(during_training) == {}
    both = ZeroShotConfig(tasks=["hellaswag", "lambada"], train_tasks=["lambada"], train_limit=8,
                          hellaswag_sha256="0" * 64)
    training = both.measured_settings(during_training=True)
    assert training == {"train_tasks": ["lambada"], "train_every": 250, "train_limit": 8, "batch_size": 16,
                        "lambada_source": both.lambada_source, "lambada_sha256": both.lambada_sha256}
    assert set(both.measured_settings(during_training=False)) == {
        "tasks", "limit", "batch_size", "lambada_source", "lambada_sha256", "hellaswag_source", "hellaswag_sha256",
        "hellaswag_context"}
    assert ZeroShotConfig(**training).measured_settings(during_training=True) == training  # what the stage reads

    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    plan = stages["plan-zero-shot"]
    assert plan["params"] == ["zero_shot"]
    for stage, out in (("train", "data/zero_shot/train.json"), ("evaluate", "data/zero_shot/evaluate.json")):
        assert out in plan["outs"] and out in stages[stage]["deps"] and f"--zero-shot-plan {out}" in stages[stage]["cmd"]
        assert not [key for key in stages[stage]["params"] if str(key).startswith("zero_shot")]


def test_perplexity_is_exp_of_the_mean_negative_log_likelihood(tokenizer, tmp_path):
    path = tmp_path / "lambada.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in ("He opened the door", "She sat down")))
    task = load_task("lambada", local(lambada=path), tokenizer, None)
    assert task.metrics([-2.0, -4.0], [True, False]) == {"acc": 0.5, "perplexity": math.exp(3.0)}
