"""The book's chapter-7 instruction fine-tuning against its own package (`llms-from-scratch`): the same
split and prompts, the same batches, the same losses at every evaluation, the same greedy responses; the
batched decoder against one prompt at a time; the judge client against a local server; bad input.

Tolerances: both sides compute in fp32 with equivalent kernels (the book's LayerNorm, GELU and attention
against PyTorch's fused ones; foreach against fused AdamW), ~1e-6 apart per forward pass; 1e-5 leaves room
for that to grow over the steps compared. Token ids are compared exactly.
"""

import json
from functools import partial

import pytest
import torch
from conftest import JudgeServer, interrupt_at
from torch.utils.data import DataLoader

from gptcore.data.instructions import prepare_instructions, read_split
from gptcore.errors import ConfigError, GptcoreError
from gptcore.evaluation.judge import JudgeUnreachable, check_judge, judge_responses, parse_score, rouge_l
from gptcore.formats.book import book_model
from gptcore.model.gpt import GPT, KVCache, ModelConfig
from gptcore.model.runtime import setup_runtime
from gptcore.model.sampling import generate_batched
from gptcore.settings.instruct import INSTRUCT_TRAIN_DEFAULTS, InstructConfig
from gptcore.settings.judge import JudgeConfig
from gptcore.settings.train import TrainConfig
from gptcore.tasks.instruction_tuning import (InstructionTuning, Template, answer, collate, encode_entries, loaders_for,
                                              respond, response_loss)
from gptcore.training.trainer import Trainer

pytest.importorskip("llms_from_scratch", reason="the book's package: pip install --no-deps llms-from-scratch")
from llms_from_scratch.ch05 import generate, train_model_simple  # noqa: E402
from llms_from_scratch.ch07 import InstructionDataset, custom_collate_fn, format_input  # noqa: E402

TINY = {"vocab_size": 50257, "context_length": 128, "emb_dim": 32, "n_heads": 2, "n_layers": 3, "drop_rate": 0.0,
        "qkv_bias": True}
FP32 = setup_runtime("cpu", "fp32")


@pytest.fixture(scope="module")
def splits(tmp_path_factory, shared_dir):
    folder = tmp_path_factory.mktemp("instructions")
    prepare_instructions(InstructConfig(), folder)
    return folder


@pytest.fixture(scope="module")
def book_data(shared_dir):
    return json.loads((shared_dir / "data" / "instruction-data.json").read_text())


def test_the_splits_and_prompts_are_the_books(splits, book_data):
    """The book's slicing (85 % train, 10 % test, the rest validation) and its format_input for every entry."""
    train_end, test_end = int(len(book_data) * 0.85), int(len(book_data) * 0.85) + int(len(book_data) * 0.1)
    book = {"train": book_data[:train_end], "test": book_data[train_end:test_end], "validation": book_data[test_end:]}
    assert {name: len(part) for name, part in book.items()} == {"train": 935, "test": 110, "validation": 55}
    template = Template.of(InstructConfig())
    for name, part in book.items():
        ours = read_split(splits, name)
        assert ours == [{k: entry[k] for k in ("instruction", "input", "output")} for entry in part]
        assert [template.format_prompt(e["instruction"], e["input"]) for e in ours] == [format_input(e) for e in part]
    assert sum(not entry["input"] for entry in book_data) == 775


def base_model(seed: int = 123) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(**TINY, tie_embeddings=False, init="torch_default"))


def book_masking(items, prompt_lengths, **options):
    """The book's exercise 7.2 (custom_collate_with_masking_fn): custom_collate_fn, then each row's first
    prompt_length - 1 targets set to -100."""
    inputs, targets = custom_collate_fn(items, **options)
    for row, length in enumerate(prompt_lengths):
        targets[row, :length - 1] = -100
    return inputs, targets


@pytest.mark.parametrize("mask_prompt", [False, True])
@pytest.mark.parametrize("max_length", [None, 40])
def test_the_collation_is_the_books(splits, tokenizer, mask_prompt, max_length):
    entries = read_split(splits, "train")[:24]
    encoded = encode_entries(entries, Template.of(InstructConfig()), tokenizer)
    book = InstructionDataset(entries, tokenizer.encoding)
    assert encoded.ids == book.encoded_texts
    for start in range(0, 24, 8):
        items = encoded.items()[start:start + 8]
        ours = collate(items, pad_id=50256, ignore_index=-100, max_length=max_length, mask_prompt=mask_prompt)
        reference = book_masking if mask_prompt else (lambda batch, _, **options: custom_collate_fn(batch, **options))
        expected = reference([ids for ids, _ in items], [length for _, length in items], allowed_max_length=max_length)
        for got, want in zip(ours, expected):
            assert torch.equal(got, want)


@pytest.mark.parametrize("mask_prompt", [False, True])
def test_fine_tuning_gives_the_books_losses_at_every_evaluation(splits, tokenizer, mask_prompt):
    """train_model_simple on the book's loaders (in order, so both see the same batches) against the Trainer
    on the InstructionTuning task, from equal weights: every loss within 1e-5."""
    train, val = read_split(splits, "train")[:48], read_split(splits, "validation")[:16]
    config = InstructConfig(mask_prompt=mask_prompt)
    encoded = {name: encode_entries(part, Template.of(config), tokenizer) for name, part in (("train", train),
                                                                                           ("val", val))}
    collate_fn = partial(book_masking if mask_prompt else custom_collate_fn, allowed_max_length=128)
    loaders = []
    for name, part, drop_last in (("train", train, True), ("val", val, False)):
        items = encoded[name].items()
        dataset = [ids for ids, _ in items] if not mask_prompt else items
        book_collate = (lambda batch: collate_fn([ids for ids, _ in batch], [n for _, n in batch])) if mask_prompt \
            else collate_fn
        loaders.append(DataLoader(dataset, batch_size=8, shuffle=False, drop_last=drop_last, collate_fn=book_collate))
    book = book_model(base_model())
    optimizer = torch.optim.AdamW(book.parameters(), lr=1e-3, weight_decay=0.1)
    book_train, book_val, _ = train_model_simple(book, *loaders, optimizer, "cpu", num_epochs=2, eval_freq=3,
                                                 eval_iter=2, start_context=format_input(val[0]),
                                                 tokenizer=tokenizer.encoding)

    settings = TrainConfig(**{**INSTRUCT_TRAIN_DEFAULTS, "peak_lr": 1e-3, "eval_freq": 3, "eval_iter": 2,
                              "shuffle": False, "precision": "fp32", "device": "cpu"})
    history = Trainer(base_model(), settings, InstructionTuning(encoded["train"], encoded["val"], config)).fit()
    evals = {e["step"]: e for e in history["evals"]}
    book_steps = [step for step in range(1, len(history["steps"]) + 1) if (step - 1) % 3 == 0]
    assert len(history["steps"]) == 12 and len(book_steps) == len(book_train) == 4
    torch.testing.assert_close([evals[s]["train_loss"] for s in book_steps], book_train, atol=1e-5, rtol=0)
    torch.testing.assert_close([evals[s]["val_loss"] for s in book_steps], book_val, atol=1e-5, rtol=0)


def test_an_interrupted_fine_tuning_resumes_to_the_straight_runs_losses(splits, tokenizer, tmp_path):
    config = InstructConfig(mask_prompt=True)
    encoded = [encode_entries(read_split(splits, name)[:32], Template.of(config), tokenizer)
               for name in ("train", "validation")]
    settings = TrainConfig(**{**INSTRUCT_TRAIN_DEFAULTS, "peak_lr": 1e-3, "eval_freq": 2, "eval_iter": 1,
                              "precision": "fp32", "device": "cpu"})  # shuffled, as the pipeline
    straight = Trainer(base_model(), settings, InstructionTuning(*encoded, config)).fit()
    interrupted = Trainer(base_model(), settings, InstructionTuning(*encoded, config), checkpoint_dir=tmp_path)
    interrupt_at(interrupted, 5)
    resumed = Trainer(base_model(), settings, InstructionTuning(*encoded, config), checkpoint_dir=tmp_path)
    assert resumed.resume() and resumed.step == 5
    history = resumed.fit()
    assert [e["val_loss"] for e in history["evals"]] == [e["val_loss"] for e in straight["evals"]]
    assert len(straight["steps"]) == 8


def test_greedy_responses_at_batch_1_are_the_books_generate_token_for_token(splits, tokenizer):
    """The book's generate (no cache, one entry at a time, stopping at 50256) and its stripping against
    respond() at batch 1; then batched: the first step's logits of a left-padded batch equal each
    prompt's own within fp32 rounding, and the responses agree with batch 1's (counted)."""
    model = base_model(7).eval()
    book = book_model(model).eval()
    entries = read_split(splits, "test")[:16]
    template = Template.of(InstructConfig())
    expected = []
    for entry in entries:
        prompt = format_input(entry)
        ids = generate(book, torch.tensor([tokenizer.encode(prompt)]), max_new_tokens=24, context_size=128,
                       eos_id=50256)
        expected.append(tokenizer.decode(ids[0].tolist())[len(prompt):].replace("### Response:", "").strip())
    ours, stats = respond(model, template, entries, tokenizer, max_new_tokens=24, batch_size=1, runtime=FP32)
    assert ours == expected and stats["prompts_cut"] == 0

    prompts = [tokenizer.encode(template.format_prompt(e["instruction"], e["input"])) for e in entries[:4]]
    longest = max(len(p) for p in prompts)
    padded = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
    cache = KVCache(model.config, 4, "cpu", torch.float32, pad=torch.tensor([longest - len(p) for p in prompts]))
    logits, _ = model(padded, kv_cache=cache, last_token_only=True)
    for row, prompt in enumerate(prompts):
        alone, _ = model(torch.tensor([prompt]), last_token_only=True)
        torch.testing.assert_close(logits[row], alone[0], atol=1e-5, rtol=0)
    batched, _ = respond(model, template, entries, tokenizer, max_new_tokens=24, batch_size=8, runtime=FP32)
    agree = sum(a == b for a, b in zip(batched, ours))
    print(f"batched (8) responses equal to batch 1's: {agree} of {len(ours)}")
    assert agree >= len(ours) // 2  # a masking bug changes every padded row; a near-tie flips one now and then


def test_batched_decoding_stops_each_sequence_at_its_end_of_text_and_at_the_context():
    model = base_model(3).eval()
    prompts = [[464, 3290, 318], list(range(100, 220)), [50256]]
    alone = [generate_batched(model, [p], 20, eos_id=None, batch_size=1)[0] for p in prompts]
    assert [len(tokens) for tokens in alone] == [20, 128 - 120 + 1, 20]  # the context stops the long one
    eos = alone[0][5]
    stopped = generate_batched(model, prompts, 20, eos_id=eos, batch_size=3)
    assert stopped[0] == alone[0][:alone[0].index(eos)]
    for tokens, reference in zip(stopped, alone):
        assert eos not in tokens and tokens == reference[:len(tokens)]


def test_the_loss_on_response_tokens_counts_only_them(splits, tokenizer):
    entries = read_split(splits, "test")[:8]
    encoded = encode_entries(entries, Template.of(InstructConfig()), tokenizer)
    config = InstructConfig(mask_prompt=True)
    loader = loaders_for(encoded, config, 128, batch_size=4, shuffle=False, drop_last=False, seed=0, split="test")
    from gptcore.tasks.instruction_tuning import InstructionModel

    measured = response_loss(InstructionModel(base_model(), -100), loader, num_batches=None, runtime=FP32)
    # the response marker, the output and the end-of-text of each entry
    assert measured["tokens"] == sum(len(ids) - n + 1 for ids, n in encoded.items())
    assert measured["perplexity"] == pytest.approx(torch.tensor(measured["loss"]).exp().item())


@pytest.mark.parametrize("template,prompt", [
    ("phi3", "<|user|>\nName a fruit.\nred"),
    ("alpaca", "Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n### Instruction:\nName a fruit.\n\n### Input:\nred"),
])
def test_templates_format_as_the_books(template, prompt):
    named = Template.of(InstructConfig(template=template))
    assert named.format_prompt("Name a fruit.", "red") == prompt
    custom = Template.of(InstructConfig(prompt_template="Q: {instruction}", input_template=" ({input})",
                                        response_template="\nA:"))
    assert custom.format_entry({"instruction": "Name a {fruit}.", "input": "", "output": "Apple"}) == \
        ("Q: Name a {fruit}.", "Q: Name a {fruit}.\nA:Apple")
    assert named.response_of(f"{named.response}Apple.\n") == "Apple."


@pytest.mark.parametrize("fields,message", [
    ({"prompt_template": "Do this"}, r"instruct.prompt_template = 'Do this' has no \{instruction\}"),
    ({"input_template": "\n\n### Input:"}, r"instruct.input_template .* has no \{input\}"),
    ({"prompt_template": "{instruction} {output}"}, r"holds \{output\}, which it does not fill in"),
    ({"train_ratio": 0.9, "test_ratio": 0.1}, "leaves no validation split"),
])
def test_bad_templates_and_splits_are_refused_in_one_line(fields, message):
    with pytest.raises(ConfigError, match=message):
        InstructConfig(**fields)


@pytest.mark.parametrize("content,message", [
    ('[{"instruction": "Say hi", "input": "", "output": "hi"}, {"instruction": "", "output": "x"}]',
     r"entry 2 has no 'instruction'"),
    ('[{"instruction": "Say hi", "input": ""}]', r"entry 1 has no 'output'"),
    ('{"instruction": "Say hi"}', "is not a JSON list of entries"),
    ('[{"instruction": "Say hi", "input": 3, "output": "hi"}]', r"entry 1: 'input' is 3, not text"),
])
def test_bad_entries_give_one_line_before_any_compute(tmp_path, content, message):
    (tmp_path / "data.json").write_text(content)
    with pytest.raises(GptcoreError, match=message):
        prepare_instructions(InstructConfig(source=str(tmp_path / "data.json"), sha256=None), tmp_path / "out")


def test_jsonl_with_other_field_names_and_a_split_that_leaves_a_part_empty(tmp_path):
    rows = [{"prompt": f"Count to {n}", "answer": " ".join(map(str, range(1, n + 1)))} for n in range(1, 21)]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    config = InstructConfig(source=str(tmp_path / "data.jsonl"), sha256=None, instruction_field="prompt",
                            input_field=None, output_field="answer")
    meta = prepare_instructions(config, tmp_path / "out")
    assert meta["entries"] == {"train": 17, "validation": 1, "test": 2}
    assert read_split(tmp_path / "out", "test")[0] == {"instruction": "Count to 18", "input": "",
                                                       "output": " ".join(map(str, range(1, 19)))}
    (tmp_path / "few.jsonl").write_text("\n".join(json.dumps(row) for row in rows[:5]) + "\n")
    with pytest.raises(GptcoreError, match="leave the test split of 5 entries empty"):
        prepare_instructions(InstructConfig(**{**config.__dict__, "source": str(tmp_path / "few.jsonl")}),
                             tmp_path / "out")


def test_answer_takes_an_optional_input_and_refuses_a_missing_instruction(tokenizer):
    model = base_model().eval()
    template, info = Template.of(InstructConfig()), {"max_new_tokens": 5}
    with_gap = answer(model, template, info, [{"instruction": "Say hi", "input": float("nan")}], tokenizer, FP32)
    assert with_gap == answer(model, template, info, [{"instruction": "Say hi"}], tokenizer, FP32)
    with pytest.raises(ConfigError, match="row 0 has no instruction"):
        answer(model, template, info, [{"input": "x"}], tokenizer, FP32)


def test_an_instruction_longer_than_the_context_is_refused_not_cut_and_the_cli_says_so_on_stderr(tokenizer, tmp_path,
                                                                                                capsys):
    """Cut to its last tokens, the prompt lost the template and its "### Instruction:" header and the model
    answered one token; now the served model (HTTP 400) and `gptcore instruct` refuse it in one line."""
    from gptcore.cli import main
    from gptcore.formats.model_folder import save_model
    from gptcore.tasks.instruction_tuning import save_instruct_info

    model, config = base_model().eval(), InstructConfig()
    save_model(model, tmp_path)
    save_instruct_info(tmp_path, Template.of(config), config, {"base": "test"})
    long = "Summarise this. " + "word " * 150
    with pytest.raises(ConfigError, match=r"^row 0's prompt \(the template with its instruction and input\) is \d+ "
                                          r"tokens, longer than the model's context of 128 tokens; shorten it$"):
        answer(model, Template.of(config), {"max_new_tokens": 5}, [{"instruction": long}], tokenizer, FP32)
    assert main(["instruct", long, "--model", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1 and "longer than the model's context" in err


def test_a_null_input_is_no_input_everywhere_and_a_number_is_named_by_its_value(tmp_path, tokenizer):
    entries = [{"instruction": "Say hi", "input": None, "output": "hi"}] * 20
    (tmp_path / "data.json").write_text(json.dumps(entries))
    prepare_instructions(InstructConfig(source=str(tmp_path / "data.json"), sha256=None), tmp_path / "out")
    assert read_split(tmp_path / "out", "train")[0] == {"instruction": "Say hi", "input": "", "output": "hi"}
    model, template, info = base_model().eval(), Template.of(InstructConfig()), {"max_new_tokens": 5}
    assert answer(model, template, info, [{"instruction": "Say hi", "input": None}], tokenizer, FP32) == \
        answer(model, template, info, [{"instruction": "Say hi"}], tokenizer, FP32)
    with pytest.raises(ConfigError, match=r"^row 0: input is 3, not text; give text or leave it out$"):
        answer(model, template, info, [{"instruction": "Say hi", "input": 3}], tokenizer, FP32)


# -- the judge -------------------------------------------------------------------------------------------

ENTRIES = [{"instruction": "Name three colors.", "input": "", "output": "Red, green, blue.",
            "model_response": "red green blue and more words"},
           {"instruction": "Translate.", "input": "Hola", "output": "Hello", "model_response": "Hello"}]


@pytest.mark.parametrize("api,path", [("ollama", "/api/chat"), ("openai", "/v1/chat/completions")])
def test_the_judge_client_sends_the_books_request_and_reads_the_score(api, path):
    template = Template.of(InstructConfig())
    with JudgeServer() as server:
        config = JudgeConfig(enabled=True, api=api, url=server.url + path, model="llama3")
        check_judge(config)
        assert judge_responses(config, template, ENTRIES) == [6, 1]
    sent_path, body = server.requests[0]
    assert sent_path == path and body["model"] == "llama3"
    assert body["messages"][0]["content"].startswith(f"Given the input `{format_input(ENTRIES[0])}` and correct "
                                                     "output `Red, green, blue.`, score the model response")
    options = body["options"] if api == "ollama" else body
    assert options["seed"] == 123 and options["temperature"] == 0


def test_an_unreachable_judge_and_a_bad_url_are_one_line():
    with JudgeServer() as server:
        url = server.url
    config = JudgeConfig(enabled=True, url=f"{url}/api/chat", timeout_seconds=5)
    with pytest.raises(JudgeUnreachable, match=f"the judge at {url}/api/chat is unreachable"):
        check_judge(config)
    with pytest.raises(ConfigError, match="judge.url = 'localhost:11434' is not an http"):
        JudgeConfig(url="localhost:11434")


def test_scores_are_parsed_as_the_book_reads_them():
    assert [parse_score(text) for text in ("85", " 90.\n", "Score: 70", "none", "250")] == [85, 90, 70, None, None]
    assert rouge_l(["the cat sat"], ["the cat sat"]) == [1.0] and rouge_l(["a b"], [""]) == [0.0]


def test_lora_on_gpt2_medium_trains_the_books_7898384_parameters():
    """Exercise 7.4: rank 16 on every linear layer of gpt2-medium, its tied head untied as the book's out_head."""
    from gptcore.model.lora import apply_lora
    from gptcore.settings.lora import LoraConfig

    with torch.device("meta"):
        model = GPT(ModelConfig.from_preset("gpt2-medium", qkv_bias=True, drop_rate=0.0))
        model.untie_embeddings()
        assert model.lm_head.weight is not model.transformer.wte.weight and not model.config.tie_embeddings
        assert apply_lora(model, LoraConfig(rank=16, alpha=16.0)) == 7_898_384


def test_lora_fine_tuning_trains_only_the_adapters_and_its_adapter_folder_loads_back(splits, tokenizer, tmp_path):
    from gptcore.formats.adapters import save_trained
    from gptcore.formats.model_folder import save_model
    from gptcore.model.lora import apply_lora
    from gptcore.settings.lora import LoraConfig
    from gptcore.tasks.instruction_tuning import load_instruct_model, save_instruct_info

    save_model(base_model(), tmp_path / "base")
    model, config = base_model(), InstructConfig()
    lora = LoraConfig(rank=4, alpha=8.0, save="adapter")
    apply_lora(model, lora)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    encoded = [encode_entries(read_split(splits, name)[:16], Template.of(config), tokenizer)
               for name in ("train", "validation")]
    settings = TrainConfig(**{**INSTRUCT_TRAIN_DEFAULTS, "peak_lr": 1e-2, "max_steps": 2, "precision": "fp32",
                              "device": "cpu"})
    Trainer(model, settings, InstructionTuning(*encoded, config)).fit()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_B" in name or "lora_A" in name for name in changed)
    ids = torch.tensor([encoded[0].ids[0]])
    expected = model.eval()(ids)[0]
    save_trained(model, tmp_path / "tuned", lora, str(tmp_path / "base"))
    save_instruct_info(tmp_path / "tuned", Template.of(config), config, {"base": "base"})
    assert (tmp_path / "tuned" / "adapter.safetensors").is_file()
    loaded, template, info = load_instruct_model(tmp_path / "tuned")
    torch.testing.assert_close(loaded(ids)[0], expected, atol=1e-6, rtol=0)  # the same weights and adapters, fp32
    assert template == Template.of(config) and info["max_new_tokens"] == 256


def test_length_grouped_batches_pad_less_and_keep_every_entry_once_per_epoch(splits, tokenizer):
    from gptcore.data.loaders import LengthGroupedSampler
    from gptcore.tasks.instruction_tuning import padding_share

    encoded = encode_entries(read_split(splits, "train"), Template.of(InstructConfig()), tokenizer)
    lengths = [len(ids) for ids in encoded.ids]
    grouped, book = LengthGroupedSampler(lengths, True, 123, batch_size=8), list(range(len(lengths)))
    order = grouped.order()
    assert sorted(order) == book and order == LengthGroupedSampler(lengths, True, 123, batch_size=8).order()
    grouped.set_position(1)
    assert grouped.order() != order  # a new grouping each epoch
    share = {name: padding_share(encoded, [o[i:i + 8] for i in range(0, 928, 8)], 1024)
             for name, o in (("book", book), ("grouped", order))}
    assert share["grouped"] < share["book"] / 4
    loader = loaders_for(encoded, InstructConfig(), 1024, batch_size=8, shuffle=True, drop_last=True, seed=123,
                         split="train", grouped=True)
    assert [len(batch[0]) for batch in loader] == [8] * 116  # the incomplete batch stays last and is dropped
