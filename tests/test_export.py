"""`gptcore export-hf`: a complete Hugging Face folder of each kind of model gptcore makes, proven by
transformers itself (from_pretrained, AutoTokenizer, pipeline) offline. Every comparison is in fp32 on the
CPU: 1e-5 is float32 rounding over a few layers, far below any wrong mapping (a swapped or untransposed
matrix moves logits by 1e-1 or more)."""

import json

import pytest
import torch

from gptcore.cli import main
from gptcore.formats.adapters import save_trained
from gptcore.formats.huggingface import HfFormatError
from gptcore.formats.loading import load_model
from gptcore.formats.model_folder import save_model
from gptcore.model.gpt import GPT, ModelConfig
from gptcore.model.lora import apply_lora
from gptcore.model.runtime import setup_runtime
from gptcore.model.sampling import generate
from gptcore.settings.instruct import InstructConfig
from gptcore.settings.lora import LoraConfig
from gptcore.tasks.classification import attach_head, classify, load_classifier, save_classifier
from gptcore.tasks.instruction_tuning import Template, load_instruct_model, save_instruct_info

transformers = pytest.importorskip("transformers")
FP32 = setup_runtime("cpu", "fp32")
PROMPTS = ["Every effort moves you", "I HAD always thought Jack Gisburn", "The verdict was", "{braces} & <tags>"]


def varied_model(seed: int = 0, **overrides) -> GPT:
    """A tiny GPT whose greedy tokens vary (PyTorch's default init: larger weights than GPT-2's 0.02)."""
    torch.manual_seed(seed)
    return GPT(ModelConfig.from_preset("tiny", **{"init": "torch_default", "qkv_bias": True, **overrides})).eval()


def export(source, out, capsys) -> str:
    assert main(["export-hf", str(source), str(out)]) == 0
    return capsys.readouterr().err


def test_transformers_pipeline_generates_greedy_what_gptcore_generate_prints(tmp_path, capsys):
    save_model(varied_model(), tmp_path / "model")
    export(tmp_path / "model", tmp_path / "hf", capsys)
    generator = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    for prompt in PROMPTS:
        assert main(["generate", prompt, "--model", str(tmp_path / "model"), "--temperature", "0", "--weights",
                     "fp32", "--max-new-tokens", "20"]) == 0
        printed = capsys.readouterr().out
        (answered,) = generator(prompt, do_sample=False, max_new_tokens=20)
        assert answered["generated_text"] + "\n" == printed
    assert len({generator(prompt, do_sample=False, max_new_tokens=20)[0]["generated_text"][len(prompt):]
                for prompt in PROMPTS}) == len(PROMPTS)  # the model says different things: a real comparison
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": 50256, "max_new_tokens": 50,
                          "do_sample": True, "temperature": 0.7, "top_k": 50, "top_p": 0.95}  # the generate section's
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "hf").eos_token_id == 50256


def test_the_exported_tokenizer_gives_tiktokens_ids_on_the_shared_texts(tmp_path, shared_dir, tokenizer, capsys):
    save_model(varied_model(), tmp_path / "model")
    export(tmp_path / "model", tmp_path / "hf", capsys)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    instructions = json.loads((shared_dir / "data" / "instruction-data.json").read_text())
    texts = [(shared_dir / "data" / name).read_text(encoding="utf-8") for name in ("the-verdict.txt",
                                                                                  "tinyshakespeare.txt")]
    texts += [json.dumps(instructions, ensure_ascii=False), "a <|endoftext|> b\n\n  c\t\u00e9\u4e2d\U0001f600 "]
    for text in texts:
        ids = tokenizer.encode(text)
        assert hf_tokenizer(text)["input_ids"] == ids
        assert hf_tokenizer.decode(ids) == text
    assert hf_tokenizer.eos_token_id == 50256 and hf_tokenizer.model_max_length == 64


def test_the_folder_read_back_by_gptcore_gives_the_same_logits(tmp_path, capsys):
    model = varied_model(tie_embeddings=False)
    save_model(model, tmp_path / "model")
    export(tmp_path / "model", tmp_path / "hf", capsys)
    ids = torch.randint(0, 50257, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(ids)[0]
        torch.testing.assert_close(load_model(tmp_path / "hf").eval()(ids)[0], expected, atol=1e-5, rtol=0)
        hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
        torch.testing.assert_close(hf_model(ids).logits, expected, atol=1e-5, rtol=0)


def classifier_folder(folder, position: str, seed: int = 0):
    model = attach_head(varied_model(seed), 3)
    with torch.no_grad():
        model.lm_head.bias.copy_(torch.tensor([0.3, -0.3, 0.2]))  # a bias the export must fold, not drop
    info = {"labels": ["ham", "spam", "eggs"], "position": position, "max_length": 12, "pad_id": 50256, "base": "t"}
    return save_classifier(model, folder, info)


def test_a_classifier_exports_as_sequence_classification_and_scores_what_gptcore_classify_prints(
        tmp_path, tokenizer, capsys):
    """Hugging Face's score layer has no bias: the book head's bias is folded into the final LayerNorm's (the
    head is all that reads it), so labels and scores stay; texts longer than the classifier's 12 tokens are
    cut as gptcore cuts them with truncation=True."""
    classifier_folder(tmp_path / "classifier", "last_token")
    assert export(tmp_path / "classifier", tmp_path / "hf", capsys) == ""
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"] and config["pad_token_id"] == 50256
    assert config["id2label"] == {"0": "ham", "1": "spam", "2": "eggs"}
    texts = ["Free entry to win a prize, text WIN now", "ok", "See you at lunch tomorrow?",
             "a text much longer than the twelve tokens this classifier reads, so it is cut " * 3]
    classifier, info = load_classifier(tmp_path / "classifier")
    expected = classify(classifier, info, texts, tokenizer, FP32)
    scorer = transformers.pipeline("text-classification", model=str(tmp_path / "hf"), device="cpu", top_k=None)
    for batch_size in (1, 4):  # one at a time, and padded together
        for text, mine, theirs in zip(texts, expected, scorer(texts, batch_size=batch_size, truncation=True)):
            assert max(theirs, key=lambda score: score["score"])["label"] == mine["label"], text
            for score in theirs:
                assert score["score"] == pytest.approx(mine["probabilities"][score["label"]], abs=1e-5), text
    assert len({result["label"] for result in expected}) > 1  # not one answer for every text


def test_a_classifier_that_reads_the_last_padded_position_is_exported_with_a_warning_saying_how_pipeline_differs(
        tmp_path, capsys):
    classifier_folder(tmp_path / "classifier", "last")
    warned = export(tmp_path / "classifier", tmp_path / "hf", capsys)
    assert warned.startswith("warning: This classifier reads the last of its 12 positions after padding")
    assert len(warned.strip().splitlines()) == 1 and "classify.position: last_token" in warned
    assert "reads the last of its 12 positions" in (tmp_path / "hf" / "README.md").read_text()


@pytest.mark.parametrize("template", ["alpaca", "phi3"])
def test_an_instruction_model_exports_its_template_as_the_chat_template_and_decodes_greedy_as_gptcore(
        tmp_path, tokenizer, template, capsys):
    """The chat template's generation prompt ends with the response marker, as the training texts do;
    `gptcore instruct` (the book's generate) lets the model write the marker itself."""
    config = InstructConfig(template=template)
    save_model(varied_model(tie_embeddings=False), tmp_path / "instruct")
    save_instruct_info(tmp_path / "instruct", Template.of(config), config, {"base": "base-model"})
    export(tmp_path / "instruct", tmp_path / "hf", capsys)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    template_of = Template.of(config)
    for instruction, input_text in (("Name three primary colors.", ""), ("Rewrite {this} in passive voice.",
                                                                          "The cat chased the mouse.")):
        messages = [{"role": "user", "content": instruction}] + \
                   ([{"role": "input", "content": input_text}] if input_text else [])
        prompt = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert prompt == template_of.format_prompt(instruction, input_text) + template_of.response
    model, _, _ = load_instruct_model(tmp_path / "instruct")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = hf_tokenizer.apply_chat_template([{"role": "user", "content": "Say hi"}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)["input_ids"]
    assert ids[0].tolist() == tokenizer.encode(template_of.format_prompt("Say hi") + template_of.response)
    new = hf_model.generate(ids, max_new_tokens=10)[0, ids.shape[1]:]  # greedy: the folder's generation config
    assert new.tolist() == generate(model, ids, 10, eos_id=50256)[0, ids.shape[1]:].tolist()


def test_lora_adapters_are_merged_into_the_exported_weights(tmp_path, capsys):
    save_model(varied_model(tie_embeddings=False), tmp_path / "base")
    model = varied_model(tie_embeddings=False)
    lora = LoraConfig(rank=4, alpha=8.0, save="adapter")
    apply_lora(model, lora)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapters something to change
                parameter.normal_(0, 0.01)
    save_trained(model, tmp_path / "adapters", lora, str(tmp_path / "base"))
    export(tmp_path / "adapters", tmp_path / "hf", capsys)
    ids = torch.randint(0, 50257, (2, 30), generator=torch.Generator().manual_seed(1))
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        expected = model.eval()(ids)[0]
        assert (expected - load_model(tmp_path / "base")(ids)[0]).abs().max() > 1e-2  # the adapters matter
        torch.testing.assert_close(hf_model(ids).logits, expected, atol=1e-5, rtol=0)


def test_the_model_card_names_the_base_the_data_the_metrics_and_the_run(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    run = client.create_run(client.create_experiment("cards"), tags={"git_commit": "abc123"})
    client.log_param(run.info.run_id, "instruct.init_from", "models")
    client.log_param(run.info.run_id, "instruct.source", "instruction-data.json")
    client.log_metric(run.info.run_id, "evaluate/test_loss", 0.8125, step=3)
    client.log_metric(run.info.run_id, "evaluate/generation_tokens_per_second", 99.0, step=3)
    config = InstructConfig()
    save_model(varied_model(), tmp_path / "instruct")
    save_instruct_info(tmp_path / "instruct", Template.of(config), config, {"base": "models"})
    (tmp_path / "instruct" / "mlflow_run.json").write_text(json.dumps({"run_id": run.info.run_id, "step": 3}))
    export(tmp_path / "instruct", tmp_path / "hf", capsys)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    for line in ("- base: `models`", "- data: `instruction-data.json`", "| test_loss | 0.8125 |",
                 f"MLflow run `{run.info.run_id}`", "git commit `abc123`"):
        assert line in card, line
    assert "per_second" not in card  # a speed is not the model's evaluation


def test_bad_exports_are_refused_in_one_line(tmp_path, capsys):
    save_model(varied_model(), tmp_path / "model")
    assert main(["export-hf", str(tmp_path / "model"), str(tmp_path / "missing" / "hf")]) == 1
    assert capsys.readouterr().err == (f"gptcore export-hf: error: {tmp_path / 'missing'} does not exist: create "
                                       "it, or write the export elsewhere\n")
    classifier_folder(tmp_path / "classifier", "last_token")
    export(tmp_path / "classifier", tmp_path / "hf", capsys)
    with pytest.raises(HfFormatError, match="unexpected tensor .score.weight."):  # transformers runs it, not gptcore
        load_model(tmp_path / "hf")
