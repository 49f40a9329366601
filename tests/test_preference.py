"""DPO against the book's bonus notebook (../shared/reference/dpo-from-scratch.ipynb, its functions taken by name and
run; nothing of it is copied here): the same split and prompts, the same batches and masks, the same losses and
rewards at every evaluation from the same SFT weights, with the reference precomputed and per step; bad input.

Tolerances: both sides compute in fp32 (the notebook's log_softmax over every position against gptcore's head on the
scored positions only and a logsumexp; foreach against fused AdamW), ~1e-6 apart per forward pass; 1e-5 leaves room
for that to grow over the steps compared. Token ids and masks are compared exactly.
"""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks.dpo_notebook import notebook_functions
from gptcore.data.instructions import PREFERENCE_FIELDS, prepare_instructions, read_split
from gptcore.errors import ConfigError, GptcoreError
from gptcore.formats.book import book_model
from gptcore.model.gpt import GPT, ModelConfig
from gptcore.params import ParamsError, validate
from gptcore.settings.instruct import InstructConfig
from gptcore.settings.preference import PREFERENCE_TRAIN_DEFAULTS, PreferenceConfig
from gptcore.settings.train import TrainConfig
from gptcore.tasks.instruction_tuning import Template
from gptcore.tasks.preference_tuning import (PreferenceTuning, collate_preferences, dpo_loss, encode_preferences,
                                             response_logprobs)
from gptcore.training.trainer import Trainer

pytest.importorskip("llms_from_scratch", reason="the book's package: pip install --no-deps llms-from-scratch")

TINY = {"vocab_size": 50257, "context_length": 160, "emb_dim": 32, "n_heads": 2, "n_layers": 2, "drop_rate": 0.0,
        "qkv_bias": True}


@pytest.fixture(scope="module")
def notebook(shared_dir):
    """The notebook's functions and split, its cells run as they are (benchmarks/dpo_notebook.py)."""
    return notebook_functions(shared_dir)


@pytest.fixture(scope="module")
def splits(tmp_path_factory, shared_dir):
    folder = tmp_path_factory.mktemp("preferences")
    prepare_instructions(PreferenceConfig(), folder, "preference", PREFERENCE_FIELDS)
    return folder


def test_the_split_and_every_prompt_equal_the_notebooks(notebook, splits, tokenizer):
    template = Template.of(InstructConfig())  # the instruction model's: the notebook's format_input and marker
    for name, part in (("train", "train_data"), ("validation", "val_data"), ("test", "test_data")):
        expected = notebook[part]
        assert read_split(splits, name) == [{key: entry[key] for key in PREFERENCE_FIELDS} for entry in expected]
        assert [template.format_prompt(e["instruction"], e["input"]) for e in expected] == \
               [notebook["format_input"](entry) for entry in expected]
    assert [len(notebook[part]) for part in ("train_data", "test_data", "val_data")] == [935, 110, 55]
    encoded = encode_preferences(notebook["train_data"], template, tokenizer, "notebook")
    dataset = notebook["PreferenceDataset"](notebook["train_data"], tokenizer.encoding)
    assert encoded.chosen == [item["chosen"] for item in dataset.encoded_texts]
    assert encoded.rejected == [item["rejected"] for item in dataset.encoded_texts]
    assert encoded.masked == [len(item["prompt"]) + 2 for item in dataset.encoded_texts]


@pytest.mark.parametrize("max_length", [None, 100])
def test_the_batches_and_masks_are_the_notebooks(notebook, tokenizer, max_length):
    entries = notebook["train_data"][:24]
    encoded = encode_preferences(entries, Template.of(InstructConfig()), tokenizer, "notebook")
    dataset = notebook["PreferenceDataset"](entries, tokenizer.encoding)
    for start in range(0, 24, 8):
        rows = list(range(start, start + 8))
        ours = collate_preferences(encoded, rows, pad_id=50256, max_length=max_length)
        expected = notebook["custom_collate_fn"]([dataset[row] for row in rows], allowed_max_length=max_length,
                                                 mask_prompt_tokens=True)
        for got, key in zip(ours, ("chosen", "rejected", "chosen_mask", "rejected_mask")):
            assert torch.equal(got, expected[key]), key


def sft_model(seed: int = 123) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(**TINY, tie_embeddings=False, init="torch_default"))


def test_the_log_probabilities_and_the_loss_are_the_notebooks(notebook, tokenizer):
    entries = notebook["train_data"][:8]
    encoded = encode_preferences(entries, Template.of(InstructConfig()), tokenizer, "notebook")
    chosen, rejected, chosen_mask, rejected_mask = collate_preferences(encoded, list(range(8)), pad_id=50256,
                                                                       max_length=None)
    policy, reference = sft_model(1), sft_model(2)
    with torch.no_grad():
        ours = response_logprobs(policy, chosen, rejected, chosen_mask, rejected_mask)
        book = book_model(policy)
        expected = [notebook["compute_logprobs"](book(ids), ids, mask) for ids, mask in
                    ((chosen, chosen_mask), (rejected, rejected_mask))]
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
        references = response_logprobs(reference, chosen, rejected, chosen_mask, rejected_mask)
        for beta in (0.1, 0.5):
            torch.testing.assert_close(dpo_loss(*ours, *references, beta),
                                       notebook["compute_dpo_loss"](*expected, *references, beta=beta),
                                       atol=1e-6, rtol=0)


@pytest.mark.parametrize("reference", ["precomputed", "per_step"])
def test_dpo_gives_the_notebooks_losses_and_rewards_at_every_evaluation(notebook, tokenizer, reference):
    """train_model_dpo_simple on the notebook's loaders (in order, so both see the same batches) against the
    Trainer on the PreferenceTuning task, from equal SFT weights: every loss and reward within 1e-5."""
    train, val = notebook["train_data"][:40], notebook["val_data"][:16]
    config = PreferenceConfig(reference=reference)
    template = Template.of(InstructConfig())
    loaders = [DataLoader(notebook["PreferenceDataset"](part, tokenizer.encoding), batch_size=8, shuffle=False,
                          drop_last=drop_last, collate_fn=lambda batch: notebook["custom_collate_fn"](
                              batch, allowed_max_length=160, mask_prompt_tokens=True))
               for part, drop_last in ((train, True), (val, False))]
    policy, frozen = book_model(sft_model()), book_model(sft_model()).eval()
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3, weight_decay=0.01)  # a rate that moves a tiny model
    book = notebook["train_model_dpo_simple"](policy, frozen, *loaders, optimizer, num_epochs=2, beta=0.1,
                                              eval_freq=3, eval_iter=2, start_context="", tokenizer=None)

    settings = TrainConfig(**{**PREFERENCE_TRAIN_DEFAULTS, "epochs": 2, "peak_lr": 1e-3, "eval_freq": 3,
                              "eval_iter": 2, "shuffle": False, "precision": "fp32", "device": "cpu"})
    task = PreferenceTuning(*(encode_preferences(part, template, tokenizer, config.mask) for part in (train, val)),
                            config)
    history = Trainer(sft_model(), settings, task).fit()
    evals = {e["step"]: e for e in history["evals"]}
    book_steps = [step for step in range(1, len(history["steps"]) + 1) if (step - 1) % 3 == 0]
    assert len(history["steps"]) == 10 and len(book_steps) == len(book["train_losses"]) == 4
    for ours, theirs in (("train_loss", "train_losses"), ("val_loss", "val_losses"),
                         ("train_chosen_reward", "train_chosen_rewards"), ("val_chosen_reward", "val_chosen_rewards"),
                         ("train_rejected_reward", "train_rejected_rewards"),
                         ("val_rejected_reward", "val_rejected_rewards")):
        torch.testing.assert_close([evals[step][ours] for step in book_steps], book[theirs], atol=1e-5, rtol=0)
    assert book["val_chosen_rewards"][-1] - book["val_rejected_rewards"][-1] > 0  # the tuning moved the margin
    assert evals[book_steps[-1]]["val_reward_margin"] == pytest.approx(
        evals[book_steps[-1]]["val_chosen_reward"] - evals[book_steps[-1]]["val_rejected_reward"])


def test_bad_preference_settings_and_entries_are_refused_in_one_line(tmp_path, tokenizer, capsys):
    with pytest.raises(ParamsError, match=r"preference.beta = 0.0 is invalid; it must be a number > 0"):
        validate({"preference": {"beta": 0.0}})
    with pytest.raises(ParamsError, match=r"preference.reference = 'twice' is invalid"):
        validate({"preference": {"reference": "twice"}})
    entries = [{"instruction": "Say hi.", "input": "", "chosen": "Hi.", "rejected": "Go away."}] * 3
    for broken, expected in (({"chosen": ""}, "entry 2 has no 'chosen' (preference.chosen_field)"),
                             ({"rejected": None}, "entry 2 has no 'rejected' (preference.rejected_field)")):
        path = tmp_path / "preferences.json"
        path.write_text(json.dumps([entries[0], {**entries[0], **broken}, entries[0]]))
        with pytest.raises(GptcoreError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            prepare_instructions(PreferenceConfig(source=str(path), sha256=None), tmp_path / "out", "preference",
                                 PREFERENCE_FIELDS)
    path.write_text(json.dumps(entries * 6 + [{**entries[0], "rejected": "Hi."}] * 2))
    prepare_instructions(PreferenceConfig(source=str(path), sha256=None), tmp_path / "out", "preference",
                         PREFERENCE_FIELDS)
    assert capsys.readouterr().err == (f"warning: {path}: 2 of 20 entries have the same chosen and rejected response: "
                                       "they prefer nothing (their DPO loss stays log 2); fix or remove them\n")
    long = [{"instruction": "word " * 150, "input": "", "chosen": "Yes.", "rejected": "No."}] * 8
    task = PreferenceTuning(*(encode_preferences(long, Template.of(InstructConfig()), tokenizer, "notebook"),) * 2,
                            PreferenceConfig())
    settings = TrainConfig(**{**PREFERENCE_TRAIN_DEFAULTS, "precision": "fp32", "device": "cpu"})
    with pytest.raises(ConfigError, match="train entry 1: its chosen response has no token to score within 160 tokens"):
        Trainer(sft_model(), settings, task)


@pytest.mark.slow
def test_one_batchs_loss_is_trls_dpo_loss(notebook, tokenizer, tmp_path):
    """TRL's DPOTrainer (its own forward, fused head and loss, in _compute_loss) on the Hugging Face exports of the
    same policy and reference, with the notebook's masks as its completion mask: its `sigmoid` loss (summed
    log-probabilities) and `sigmoid_norm` (their means: the notebook's form) equal dpo_loss of gptcore's
    log-probabilities, and its precomputed reference sums equal gptcore's precomputed means times the counts.
    fp32 on both sides; transformers' GPT-2 and gptcore's agree within ~1e-6 per log-probability, summed over up to
    ~100 tokens: 1e-4 on sums, 1e-5 on losses."""
    trl = pytest.importorskip("trl", reason="TRL, the reference DPO: pip install trl")
    import transformers
    from datasets import Dataset

    from gptcore.formats.hf_export import write_tokenizer
    from gptcore.formats.huggingface import export_hf

    encoded = encode_preferences(notebook["train_data"][:8], Template.of(InstructConfig()), tokenizer, "notebook")
    chosen, rejected, chosen_mask, rejected_mask = collate_preferences(encoded, list(range(8)), pad_id=50256,
                                                                       max_length=None)
    policy, reference = sft_model(1).eval(), sft_model(2).eval()
    hf = {}
    for name, model in (("policy", policy), ("reference", reference)):
        export_hf(model, tmp_path / name)
        hf[name] = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / name).eval()
    write_tokenizer(tmp_path / "policy", max_length=160, pad_id=50256)
    ids = torch.cat([chosen, rejected])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "completion_mask": torch.cat([chosen_mask, rejected_mask]).long()}
    counts = torch.cat([chosen_mask, rejected_mask])[:, 1:].sum(-1).double().chunk(2)
    with torch.no_grad():
        ours = response_logprobs(policy, chosen, rejected, chosen_mask, rejected_mask)
        ours_reference = response_logprobs(reference, chosen, rejected, chosen_mask, rejected_mask)
    sums = [[mean.double() * count for mean, count in zip(pair, counts)] for pair in (ours, ours_reference)]
    for loss_type, expected in (("sigmoid", dpo_loss(*sums[0], *sums[1], 0.1)[0]),
                                ("sigmoid_norm", dpo_loss(*ours, *ours_reference, 0.1)[0])):
        config = trl.DPOConfig(output_dir=str(tmp_path / loss_type), loss_type=[loss_type], beta=0.1, use_cpu=True, bf16=False,
                               report_to=[], precompute_ref_log_probs=False, max_length=None)
        trainer = trl.DPOTrainer(hf["policy"], ref_model=hf["reference"], args=config,
                                 train_dataset=Dataset.from_list([{"prompt": "Hi.", "chosen": " Hi.", "rejected": " No."}]),
                                 processing_class=transformers.AutoTokenizer.from_pretrained(tmp_path / "policy"))
        with torch.no_grad():
            loss = trainer._compute_loss(trainer.model, dict(inputs), return_outputs=False)
            trl_reference = trainer.compute_ref_log_probs(trainer.ref_model, dict(inputs))
        torch.testing.assert_close(loss.double(), expected.double(), atol=1e-5, rtol=0)
        torch.testing.assert_close([s.double() for s in trl_reference], sums[1], atol=1e-4, rtol=0)
