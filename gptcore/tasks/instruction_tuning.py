"""Instruction fine-tuning, the book's chapter 7: entries of (instruction, input, output) formatted with a
prompt template, trained on as next-token prediction with the padding (and optionally the prompt) left out
of the loss, and answered by greedy decoding.

The template (`Template`), the book's collation (`collate`), the task the one training loop runs
(`InstructionTuning`), the loss on response tokens (`response_loss`), and the responses of a whole split
(`respond`); the entries themselves are gptcore.data.instructions. A saved instruction model is a
model folder (or an adapter folder) plus instruct.json: its template and decoding limits.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..atomic import atomic_write_text
from ..data.loaders import SplitTooShortError, make_dataloader, to_device
from ..errors import ConfigError, MissingInputError
from ..formats.loading import load_model
from ..model.sampling import check_prompt, generate_batched, new_token_budget
from ..settings.generate import GenerateConfig
from ..settings.instruct import InstructConfig, template_parts
from ..training.task import Task

INSTRUCT_FILE = "instruct.json"
SAMPLING = ("temperature", "top_k", "top_p", "seed")  # the generate settings a response may be sampled with


@dataclass(frozen=True)
class Template:
    """The prompt (with {instruction}), the input section (with {input}, only for a non-empty input) and
    the marker the response follows: the book's format_input and its response text."""
    prompt: str
    input: str
    response: str

    @classmethod
    def of(cls, config: InstructConfig) -> "Template":
        return cls(*template_parts(config))

    def format_prompt(self, instruction: str, input_text: str = "") -> str:
        # replace, not str.format: braces in an entry's text stay as they are
        prompt = self.prompt.replace("{instruction}", instruction)
        return prompt + (self.input.replace("{input}", input_text) if input_text else "")

    def format_entry(self, entry: dict) -> tuple[str, str]:
        """(the prompt, prompt + response marker + reference output): what the model sees in training."""
        prompt = self.format_prompt(entry["instruction"], entry["input"])
        return prompt, prompt + self.response + entry["output"]

    def response_of(self, generated: str) -> str:
        """The response in the text generated after the prompt: its marker removed and the text stripped,
        as the book's `.replace("### Response:", "").strip()`."""
        return generated.replace(self.response.strip(), "").strip()


# -- training -------------------------------------------------------------------------------------------

@dataclass
class EncodedEntries:
    """Each entry's tokens (prompt, marker, output) and its prompt's token count (the book's
    InstructionDatasetWithMasking: the prompt encoded on its own)."""
    ids: list[list[int]]
    prompt_lengths: list[int]

    def items(self) -> list[tuple[list[int], int]]:
        return list(zip(self.ids, self.prompt_lengths))


def encode_entries(entries: list[dict], template: Template, tokenizer) -> EncodedEntries:
    prompts, texts = zip(*(template.format_entry(entry) for entry in entries))
    return EncodedEntries(tokenizer.encode_batch(list(texts)), [len(ids) for ids in tokenizer.encode_batch(list(prompts))])


def collate(items: list[tuple[list[int], int]], *, pad_id: int, ignore_index: int, max_length: int | None,
            mask_prompt: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The book's custom_collate_fn: pad to the longest entry + 1 with pad_id; inputs = padded[:-1],
    targets = padded[1:] with every pad_id after the first replaced by ignore_index (and with mask_prompt
    the prompt's targets too: its custom_collate_with_masking_fn); both cut to max_length."""
    longest = max(len(ids) for ids, _ in items) + 1
    padded = torch.full((len(items), longest), pad_id, dtype=torch.long)
    for row, (ids, _) in enumerate(items):
        padded[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    inputs, targets = padded[:, :-1], padded[:, 1:].clone()
    is_pad = targets == pad_id
    targets[is_pad & (is_pad.cumsum(dim=1) > 1)] = ignore_index
    if mask_prompt:
        for row, (_, prompt_length) in enumerate(items):
            targets[row, :prompt_length - 1] = ignore_index
    return inputs[:, :max_length].contiguous(), targets[:, :max_length].contiguous()


class InstructionModel(nn.Module):
    """forward(inputs, targets=None) -> (logits, loss): the model's next-token loss, the targets equal to
    ignore_index skipped (PyTorch's -100 is what the model's loss skips)."""

    def __init__(self, model, ignore_index: int):
        super().__init__()
        self.model, self.ignore_index = model, ignore_index

    def forward(self, inputs, targets=None):
        if targets is not None and self.ignore_index != -100:
            targets = targets.masked_fill(targets == self.ignore_index, -100)
        return self.model(inputs, targets)


def length_limit(config: InstructConfig, context_length: int) -> int:
    return min(config.allowed_max_length or context_length, context_length)


def count_cut(encoded: EncodedEntries, limit: int) -> int:
    """Entries whose tokens the limit cuts (the inputs hold an entry's tokens, the targets one more)."""
    return sum(len(ids) > limit for ids in encoded.ids)


def loaders_for(encoded: EncodedEntries, config: InstructConfig, limit: int, *, batch_size: int, shuffle: bool,
                drop_last: bool, seed: int, split: str, pin_memory: bool = False, grouped: bool = False):
    """A loader of collated batches; grouped: batches of similar lengths (instruct.group_by_length)."""
    def collate_batch(items):
        return collate(items, pad_id=config.pad_id, ignore_index=config.ignore_index, max_length=limit,
                       mask_prompt=config.mask_prompt)
    return make_dataloader(encoded.items(), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                           split=split, pin_memory=pin_memory, collate_fn=collate_batch,
                           lengths=[len(ids) for ids in encoded.ids] if grouped else None)


class InstructionTuning(Task):
    """The book's chapter 7 as a task of the one training loop: batches collated as custom_collate_fn, the
    next-token loss on the unmasked targets, losses every eval_freq steps on the first eval_iter batches
    of each split (in order)."""

    def __init__(self, train: EncodedEntries, val: EncodedEntries, config: InstructConfig):
        self.splits, self.config = {"train": train, "validation": val}, config

    def bind(self, model, config, runtime, ranks, pin_memory: bool) -> None:
        if ranks.world_size > 1 or config.windows == "random":
            raise ConfigError("instruct_train: instruction fine-tuning runs in one process on the entries in "
                              "epochs; set instruct_train.nproc: 1 and windows: sliding")
        if len(self.splits["train"].ids) < config.batch_size * config.grad_accum_steps:
            raise SplitTooShortError(f"the training split has {len(self.splits['train'].ids)} entries, fewer than "
                                     f"one step's {config.batch_size * config.grad_accum_steps} "
                                     "(instruct_train.batch_size x grad_accum_steps); lower them or add entries")
        self.limit = length_limit(self.config, model.config.context_length)
        for name, encoded in self.splits.items():
            if cut := count_cut(encoded, self.limit):
                print(f"warning: {name}: {cut} of {len(encoded.ids)} entries are longer than {self.limit} tokens and "
                      "were cut to it", file=sys.stderr)
        self.module = InstructionModel(model, self.config.ignore_index)
        self.train_loader = loaders_for(self.splits["train"], self.config, self.limit, batch_size=config.batch_size,
                                        shuffle=config.shuffle, drop_last=config.drop_last, seed=config.seed,
                                        split="train", pin_memory=pin_memory, grouped=self.config.group_by_length)
        self.in_order = {name: loaders_for(encoded, self.config, self.limit, batch_size=config.batch_size,
                                           shuffle=False, drop_last=False, seed=0, split=name, pin_memory=pin_memory)
                         for name, encoded in self.splits.items()}

    def training_module(self, model):
        return self.module

    def evaluate(self, model, runtime, num_batches: int) -> dict:
        return {f"{'val' if name == 'validation' else name}_loss":
                response_loss(self.module, loader, num_batches=num_batches, runtime=runtime)["batch_mean"]
                for name, loader in self.in_order.items()}


@torch.no_grad()
def response_loss(module: InstructionModel, batches, *, num_batches: int | None, runtime) -> dict:
    """Over the first num_batches batches (all when None): the mean of the batch losses (the book's
    calc_loss_loader) and the mean over every scored target token, with its perplexity and token count."""
    was_training = module.training
    module.eval()
    losses, total, tokens = [], 0.0, 0
    for index, batch in enumerate(batches):
        if num_batches is not None and index >= num_batches:
            break
        inputs, targets = to_device(batch, runtime.device)
        with runtime.autocast():
            _, loss = module(inputs, targets)
        scored = int((targets != module.ignore_index).sum())
        losses.append(loss.item())
        if scored:  # a batch with every target masked has no loss (NaN), nor tokens
            total, tokens = total + loss.item() * scored, tokens + scored
    module.train(was_training)
    token_mean = total / tokens if tokens else float("nan")
    return {"batch_mean": sum(losses) / len(losses), "loss": token_mean, "perplexity": math.exp(token_mean),
            "tokens": tokens}


def padding_share(encoded: EncodedEntries, batches_of: list[list[int]], limit: int) -> float:
    """The share of the input positions computed in these batches (lists of entry indices) that hold
    padding rather than an entry's tokens."""
    computed = padded = 0
    for rows in batches_of:
        lengths = [min(len(encoded.ids[row]), limit) for row in rows]
        width = min(max(len(encoded.ids[row]) for row in rows), limit)  # the longest + 1, less the last
        computed += width * len(rows)
        padded += sum(width - length for length in lengths)
    return padded / computed


# -- responses ------------------------------------------------------------------------------------------

def respond(model, template: Template, entries: list[dict], tokenizer, *, max_new_tokens: int, batch_size: int,
            runtime, sampler: GenerateConfig | None = None, refuse_long: bool = False) -> tuple[list[str], dict]:
    """Each entry's response to its formatted prompt, greedy to its end-of-text (the book's generate and its
    stripping) or as sampler samples (its temperature, top_k, top_p, seed and stop_at_eos), and what the
    decoding did: tokens generated, prompts cut to the context, responses the context stopped. A prompt longer
    than the context keeps its last tokens (a test split's responses), or with refuse_long is an error naming
    its row (a request: cut, it would lose the template and its header)."""
    context = model.config.context_length
    prompts = [template.format_prompt(entry["instruction"], entry["input"]) for entry in entries]
    encoded = tokenizer.encode_batch(prompts)
    for index, ids in enumerate(encoded if refuse_long else ()):
        check_prompt(len(ids), context, f"row {index}'s prompt (the template with its instruction and input)")
    cut = sum(len(ids) > context for ids in encoded)
    encoded = [ids[-context:] for ids in encoded]
    if cut:
        prompts = [tokenizer.decode(ids) for ids in encoded]
        print(f"warning: {cut} of {len(entries)} prompts are longer than the model's context of {context} tokens; "
              "their last tokens were kept", file=sys.stderr)
    model.to(runtime.device)
    with runtime.autocast():
        sampling = {} if sampler is None else {name: getattr(sampler, name) for name in SAMPLING}
        stop = sampler is None or sampler.stop_at_eos
        new = generate_batched(model, encoded, max_new_tokens, eos_id=tokenizer.eot_id if stop else None,
                               batch_size=batch_size, **sampling)
    responses = [template.response_of(tokenizer.decode(ids + tokens)[len(prompt):])
                 for ids, tokens, prompt in zip(encoded, new, prompts)]
    stopped = sum(len(tokens) == new_token_budget(len(ids), context, max_new_tokens) < max_new_tokens
                  for ids, tokens in zip(encoded, new))
    return responses, {"generated_tokens": sum(len(tokens) for tokens in new), "prompts_cut": cut,
                       "stopped_by_context": stopped}


# -- the saved instruction model ------------------------------------------------------------------------

def save_instruct_info(folder, template: Template, config: InstructConfig, info: dict) -> None:
    atomic_write_text(Path(folder) / INSTRUCT_FILE, json.dumps(
        {"template": asdict(template), "max_new_tokens": config.max_new_tokens, **info}, indent=2) + "\n")


def load_instruct_model(folder):
    """(the model, its template, its instruct.json) from a folder the fine-tune stage wrote."""
    folder = Path(folder)
    if not (folder / INSTRUCT_FILE).is_file():
        raise MissingInputError(f"{folder} holds no instruction model ({INSTRUCT_FILE}); give the folder the "
                                "instruction pipeline wrote (data/instruct/model)")
    info = json.loads((folder / INSTRUCT_FILE).read_text())
    return load_model(folder, drop_rate=0.0).eval(), Template(**info["template"]), info


def answer(model, template: Template, info: dict, rows: list[dict], tokenizer, runtime,
           max_new_tokens: int | None = None, sampler: GenerateConfig | None = None) -> list[str]:
    """The responses to rows of {instruction, input (optional)}: what the served model and `gptcore instruct`
    return, decoded as the pipeline's test responses (greedy, at most the trained max_new_tokens) unless told
    otherwise."""
    entries = []
    for index, row in enumerate(rows):
        instruction, input_text = row.get("instruction"), row.get("input")
        if not isinstance(instruction, str) or not instruction.strip():
            raise ConfigError(f"row {index} has no instruction; give the task as `instruction` (and optional `input`)")
        if input_text is None or isinstance(input_text, float) and math.isnan(input_text):  # a DataFrame's gap
            input_text = ""
        if not isinstance(input_text, str):
            raise ConfigError(f"row {index}: input is {input_text!r}, not text; give text or leave it out")
        entries.append({"instruction": instruction, "input": input_text})
    responses, _ = respond(model, template, entries, tokenizer, max_new_tokens=max_new_tokens or info["max_new_tokens"],
                           batch_size=16, runtime=runtime, sampler=sampler, refuse_long=True)
    return responses
