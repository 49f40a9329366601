"""params.yaml `instruct`: the instruction data, its prompt template and split, the model it fine-tunes and its
test responses (the book's chapter 7; gptcore.tasks.instruction_tuning)."""

import re
from dataclasses import dataclass

from ..errors import ConfigError
from . import (book_heads_setting, check_fields, check_source_checksum, check_split_ratios, checksum_setting,
               experiment_setting, registered_model_setting, setting)
from .train import fine_tuning_docs

INSTRUCTIONS_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/01_main-chapter-code/"
                    "instruction-data.json")
INSTRUCTIONS_SHA256 = "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944"
FORMATS = ("auto", "json", "jsonl")
# a template's three parts: the prompt (with {instruction}), the input section added only for a non-empty input
# (with {input}), and the marker the response follows
TEMPLATES = {
    "alpaca": ("Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n### Instruction:\n{instruction}", "\n\n### Input:\n{input}", "\n\n### Response:\n"),
    "phi3": ("<|user|>\n{instruction}", "\n{input}", "\n<|assistant|>:\n"),  # the book's exercise 7.1
}
PLACEHOLDER = re.compile(r"\{\w+\}")

# the book's chapter-7 fine-tuning (gpt_instruction_finetuning.py): AdamW 5e-5, weight decay 0.1, 2 epochs of
# batch 8, no warmup, decay or clipping, losses on 5 batches every 5 steps from step 1
INSTRUCT_TRAIN_DEFAULTS = dict(epochs=2, batch_size=8, peak_lr=5e-5, warmup_steps=0, cosine_decay=False,
                               max_grad_norm=0.0, eval_freq=5, eval_offset=1, eval_iter=5, sample_prompt=None,
                               sample_tokens=0, checkpoint_every=50)
# what those settings mean for instruction tuning, where the training loop's own words describe pretraining
INSTRUCT_TRAIN_DOCS = fine_tuning_docs(
    "entries", 2, 5, "the LoRA adapters", sample_prompt="greedy sample at each epoch end; null: none (the test "
                                                        "responses are a stage of their own)",
    sample_tokens="tokens of that sample; 0 = no sample",
    checkpoint_every="steps between resume checkpoints (also at the end and on SIGTERM); 0 = only those")


def max_new_tokens_setting():
    """A pipeline's decoding of its test responses: the tokens of each, at most ..."""
    return setting(256, "tokens generated per test response at most (greedy, stopping at <|endoftext|> or the "
                        "model's context)", low=1)


def generate_batch_size_setting():
    """... and how many prompts decode together."""
    return setting(16, "test prompts decoded together (batched, KV-cached); 1 = one at a time", low=1)


def template_parts(config: "InstructConfig") -> tuple[str, str, str]:
    """(prompt, input section, response marker): instruct.template's, each replaced where set."""
    named = TEMPLATES[config.template]
    return (config.prompt_template or named[0], config.input_template or named[1],
            config.response_template or named[2])


@dataclass(frozen=True)
class InstructConfig:
    source: str = setting(INSTRUCTIONS_URL, "the instruction data: a .json list or .jsonl file of entries, or an "
                                            "http(s) URL of one (the book's 1,100 entries)")
    sha256: str | None = checksum_setting(INSTRUCTIONS_SHA256)
    format: str = setting("auto", "auto: .jsonl is one entry per line, anything else one JSON list | json | jsonl",
                          choices=FORMATS)
    instruction_field: str = setting("instruction", "the entries' field holding the instruction ...")
    input_field: str | None = setting("input", "... the optional input (null: the entries have none) ...")
    output_field: str = setting("output", "... and the reference response")
    template: str = setting("alpaca", "alpaca: the book's prompt | phi3: its exercise 7.1 (<|user|> ... "
                                      "<|assistant|>:); the three keys below replace its parts",
                            choices=tuple(TEMPLATES))
    prompt_template: str | None = setting(None, "your prompt, holding {instruction} (null: the template's)")
    input_template: str | None = setting(None, "added after the prompt when an entry's input is not empty, holding "
                                               "{input} (null: the template's)")
    response_template: str | None = setting(None, "the marker the response follows (null: the template's)")
    train_ratio: float = setting(0.85, "share of the entries, in file order, that train ...", low=0.0, high=1.0,
                                 low_open=True, high_open=True)
    test_ratio: float = setting(0.1, "... the next ones test; the rest validate (the book's 935 / 110 / 55)",
                                low=0.0, high=1.0, low_open=True, high_open=True)
    mask_prompt: bool = setting(False, "leave the prompt's tokens out of the loss as well, training on the "
                                       "responses only (the book's exercise 7.2)")
    group_by_length: bool = setting(False, "batch training entries of similar length together: less padding "
                                           "computed, another order than the book's (false keeps it)")
    allowed_max_length: int | None = setting(None, "tokens per entry, longer ones cut (and counted); null = the "
                                                   "model's context (the book: 1024)", low=2)
    pad_id: int = setting(50256, "pads each batch to its longest entry + 1 (<|endoftext|>, as the book)", low=0)
    ignore_index: int = setting(-100, "target id the loss skips: the padding after each entry's end-of-text")
    init_from: str = setting("models", "the pretrained model: models (this project's train stage) | gpt2 ... "
                                       "gpt2-xl (the book: gpt2-medium) | a model folder | a book model.pth")
    n_heads: int | None = book_heads_setting()
    drop_rate: float = setting(0.0, "dropout while fine-tuning (the book: 0)", low=0.0, high=1.0, high_open=True)
    max_new_tokens: int = max_new_tokens_setting()
    generate_batch_size: int = generate_batch_size_setting()
    experiment: str = experiment_setting("gptcore-instruct")
    registered_model: str | None = registered_model_setting("gptcore-instruct")

    def __post_init__(self):
        check_fields(self, "instruct")
        check_source_checksum(self, "instruct")
        check_split_ratios(self, "instruct", "train_ratio", "test_ratio", "validation")
        for key, text, allowed in zip(("prompt_template", "input_template", "response_template"),
                                      template_parts(self), ("{instruction}", "{input}", None)):
            if allowed and allowed not in text:
                raise ConfigError(f"instruct.{key} = {text!r} has no {allowed}; put {allowed} where it goes")
            stray = [name for name in PLACEHOLDER.findall(text) if name != allowed]
            if stray:
                raise ConfigError(f"instruct.{key} = {text!r} holds {stray[0]}, which it does not fill in"
                                  f"{f' (only {allowed})' if allowed else ''}; remove it")
