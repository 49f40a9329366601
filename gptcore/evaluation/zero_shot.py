"""Zero-shot benchmarks of a language model: LAMBADA and HellaSwag, scored as lm-evaluation-harness scores them.

Both ask for the log-likelihood of a continuation after a context (the harness's `loglikelihood` requests),
encoded as the harness encodes a pair for a causal model: trailing spaces of the context move to the
continuation, the two are encoded as one text and the continuation is what follows the context's tokens; an
empty context is <|endoftext|>. A request longer than the model's context + 1 tokens loses its oldest tokens
(as the harness does), and every task says how many examples that cut.

- lambada (OpenAI's LAMBADA test set, the harness's `lambada_openai`): the context is the passage without its
  last word, the continuation a space and that word. acc: the greedy continuation is the word (every token the
  likeliest); perplexity: exp of the mean negative log-likelihood of the words.
- hellaswag: four endings per context, each continuation a space and the ending. acc: the likeliest ending by
  its summed log-likelihood; acc_norm: by the mean over its tokens (build-nanogpt); acc_norm_chars: by the sum
  over the ending's characters (the harness's acc_norm). The context is the harness's prompt
  (zero_shot.hellaswag_context: harness) or the example's ctx as build-nanogpt reads it (ctx).

Scoring runs the blocks once per request, longest first in batches, and the output head only at the
continuation's positions (the head is a third of GPT-2 124M's forward pass, and a LAMBADA word one or two of
its hundred positions).
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data.corpus import CorpusError, locate_file
from ..errors import ConfigError
from ..model.gpt import GPT
from ..model.runtime import Runtime
from ..model.tokenizer import Tokenizer
from ..settings.zero_shot import ZeroShotConfig, check_tasks


@dataclass(frozen=True)
class Request:
    context: list[int]
    continuation: list[int]


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> Request:
    """A (context, continuation) pair in tokens, as lm-evaluation-harness encodes it for a causal model."""
    if not context:
        return Request([tokenizer.eot_id], tokenizer.encode(continuation))
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole, head = tokenizer.encode(context + continuation), tokenizer.encode(context)
    return Request(head, whole[len(head):])


def read_jsonl(path: Path, fields: dict[str, type], task: str) -> list[dict]:
    """The objects of a JSONL file, each checked to hold `fields` (name -> type); errors name the line."""
    examples = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                example = json.loads(line)
            except json.JSONDecodeError as error:
                raise CorpusError(f"{where} is not JSON ({error}); the {task} task reads a JSONL file, one "
                                  f"object with {', '.join(fields)} per line") from None
            for name, kind in fields.items():
                if not isinstance(example, dict) or not isinstance(example.get(name), kind) \
                        or isinstance(example.get(name), bool):
                    raise CorpusError(f"{where} has no {kind.__name__} {name!r}; is it a {task} file? Each line "
                                      f"of one holds {', '.join(fields)}")
            examples.append(example)
    if not examples:
        raise CorpusError(f"{path} holds no examples; the {task} task reads a JSONL file")
    return examples


class ZeroShotTask:
    """A task's requests, encoded once, and how its metrics follow from their scores."""
    name: str
    requests: list[Request]
    example_of: list[int]  # request i belongs to example example_of[i]
    examples: int

    def metrics(self, loglikelihoods: list[float], greedy: list[bool]) -> dict:
        raise NotImplementedError

    def cut(self, context_length: int) -> int:
        """Examples with a request longer than the model's window (context_length + 1: inputs and targets)."""
        return len({example for request, example in zip(self.requests, self.example_of)
                    if len(request.context) + len(request.continuation) > context_length + 1})


class Lambada(ZeroShotTask):
    name = "lambada"

    def __init__(self, examples: list[dict], tokenizer: Tokenizer, path: Path):
        self.requests = []
        for number, example in enumerate(examples, start=1):
            words = example["text"].split(" ")
            if len(words) < 2 or not words[-1]:
                raise CorpusError(f"{path} example {number} has no last word after a space to predict; is it "
                                  "OpenAI's LAMBADA test file?")
            self.requests.append(encode_pair(tokenizer, " ".join(words[:-1]), " " + words[-1]))
        self.examples = len(examples)
        self.example_of = list(range(self.examples))

    def metrics(self, loglikelihoods, greedy):
        return {"acc": sum(greedy) / len(greedy),
                "perplexity": math.exp(-sum(loglikelihoods) / len(loglikelihoods))}


def harness_preprocess(text: str) -> str:
    """lm-evaluation-harness's HellaSwag text cleaning (WikiHow's [title] and bracketed artifacts)."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag_prompt(example: dict, style: str) -> tuple[str, list[str]]:
    """(context, endings) of a HellaSwag example in the harness's prompt or as its ctx field."""
    if style == "ctx":
        return example["ctx"], example["endings"]
    query = example["activity_label"] + ": " + example["ctx_a"] + " " + example["ctx_b"].capitalize()
    return harness_preprocess(query), [harness_preprocess(ending) for ending in example["endings"]]


class HellaSwag(ZeroShotTask):
    name = "hellaswag"

    def __init__(self, examples: list[dict], tokenizer: Tokenizer, path: Path, style: str):
        self.requests, self.example_of, self.labels, self.lengths = [], [], [], []
        for number, example in enumerate(examples, start=1):
            endings = example["endings"]
            if len(endings) < 2 or not all(isinstance(ending, str) for ending in endings) \
                    or not 0 <= example["label"] < len(endings):
                raise CorpusError(f"{path} example {number}: its endings must be two or more texts and its label "
                                  f"the index of the right one (got label {example['label']} of {len(endings)})")
            context, choices = hellaswag_prompt(example, style)
            self.requests += [encode_pair(tokenizer, context, " " + choice) for choice in choices]
            self.example_of += [number - 1] * len(choices)
            self.labels.append(example["label"])
            self.lengths.append([len(choice) for choice in choices])
        self.examples = len(examples)

    def metrics(self, loglikelihoods, greedy):
        per_example = [[] for _ in range(self.examples)]
        for request, loglikelihood, example in zip(self.requests, loglikelihoods, self.example_of):
            per_example[example].append((loglikelihood, len(request.continuation)))
        right = {"acc": 0, "acc_norm": 0, "acc_norm_chars": 0}
        for scores, characters, label in zip(per_example, self.lengths, self.labels):
            ranked = {"acc": [ll for ll, _ in scores], "acc_norm": [ll / tokens for ll, tokens in scores],
                      "acc_norm_chars": [ll / max(chars, 1) for (ll, _), chars in zip(scores, characters)]}
            for metric, values in ranked.items():  # the first of equal scores wins, as numpy's argmax
                right[metric] += max(range(len(values)), key=values.__getitem__) == label
        return {metric: count / self.examples for metric, count in right.items()}


def task_file(name: str, config: ZeroShotConfig) -> Path:
    """The task's file from its source in the config, its sum verified (a URL's downloaded once, to the cache)."""
    return locate_file(getattr(config, f"{name}_source"), getattr(config, f"{name}_sha256"),
                       f"zero_shot.{name}_source", "JSONL", f"zero_shot.{name}_sha256")


def load_task(name: str, config: ZeroShotConfig, tokenizer: Tokenizer, limit: int | None) -> ZeroShotTask:
    """The task's examples (the first `limit`) from its source in the config, encoded."""
    check_tasks([name], "zero-shot task")
    path = task_file(name, config)
    if name == "lambada":
        return Lambada(read_jsonl(path, {"text": str}, name)[:limit], tokenizer, path)
    fields = {"ctx": str, "ctx_a": str, "ctx_b": str, "activity_label": str, "endings": list, "label": int}
    return HellaSwag(read_jsonl(path, fields, name)[:limit], tokenizer, path, config.hellaswag_context)


def load_tasks(names, config: ZeroShotConfig, tokenizer: Tokenizer, limit: int | None) -> list[ZeroShotTask]:
    return [load_task(name, config, tokenizer, limit) for name in names or ()]


@torch.no_grad()
def score_requests(model: GPT, requests: list[Request], runtime: Runtime, batch_size: int):
    """(log-likelihood of each continuation, whether it is the greedy one) and the tokens read, as the harness's
    HFLM computes them: the request's last context_length + 1 tokens, its continuation's log-probabilities
    (fp32) from the positions before them."""
    context_length, vocabulary = model.config.context_length, model.config.vocab_size
    largest = max(max(request.context + request.continuation) for request in requests)
    if largest >= vocabulary:
        raise ConfigError(f"the model's vocabulary holds {vocabulary:,} tokens, the tasks' text has token id {largest:,}"
                          "; zero-shot tasks need a language model over GPT-2's vocabulary")
    for number, request in enumerate(requests, start=1):
        if len(request.continuation) > context_length:
            raise ConfigError(f"request {number}'s continuation has {len(request.continuation)} tokens, more than the "
                              f"model's context of {context_length}; a model with a longer context can score it")
    windows = [(request.context + request.continuation)[-(context_length + 1):][:-1] for request in requests]
    order = sorted(range(len(requests)), key=lambda i: -len(windows[i]))  # longest first, as the harness
    loglikelihoods, greedy = [0.0] * len(requests), [False] * len(requests)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        inputs = torch.zeros(len(rows), len(windows[rows[0]]), dtype=torch.long)
        for row, index in enumerate(rows):
            inputs[row, :len(windows[index])] = torch.tensor(windows[index])
        with runtime.autocast():
            hidden = model.hidden_states(inputs.to(runtime.device))
            # the positions that predict each continuation's tokens: the window's last len(continuation)
            picked = torch.cat([hidden[row, len(windows[index]) - len(requests[index].continuation):
                                       len(windows[index])] for row, index in enumerate(rows)])
            logits = model.lm_head(picked)
        log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32).cpu()
        offset = 0
        for index in rows:
            continuation = torch.tensor(requests[index].continuation)
            these = log_probs[offset:offset + len(continuation)]
            offset += len(continuation)
            loglikelihoods[index] = float(these.gather(1, continuation[:, None]).sum())
            greedy[index] = bool((these.argmax(dim=-1) == continuation).all())
    model.train(was_training)
    return loglikelihoods, greedy, sum(len(window) for window in windows)


def evaluate_task(model: GPT, task: ZeroShotTask, runtime: Runtime, batch_size: int) -> dict:
    """The task's metrics, its examples and how many the model's context cut, the precision and the speed."""
    started = time.perf_counter()
    loglikelihoods, greedy, tokens = score_requests(model, task.requests, runtime, batch_size)
    seconds = time.perf_counter() - started
    return {**task.metrics(loglikelihoods, greedy), "examples": task.examples,
            "cut": task.cut(model.config.context_length), "precision": runtime.precision, "seconds": seconds,
            "tokens_per_second": tokens / seconds}


def evaluate_tasks(model: GPT, tasks: list[ZeroShotTask], runtime: Runtime, batch_size: int) -> dict[str, dict]:
    """{task name: evaluate_task's result} for each task."""
    return {task.name: evaluate_task(model, task, runtime, batch_size) for task in tasks}


def cut_warning(task: ZeroShotTask, context_length: int) -> str | None:
    """The line that says how many examples the model's context cuts, or None."""
    cut = task.cut(context_length)
    if not cut:
        return None
    return (f"{task.name}: {cut:,} of {task.examples:,} examples are longer than the model's context of "
            f"{context_length} tokens; their oldest tokens are left out (as lm-evaluation-harness does)")


def warn_of_cuts(tasks: list[ZeroShotTask], context_length: int) -> None:
    """Say on stderr, before any scoring, how many examples of each task the context cuts."""
    for line in filter(None, (cut_warning(task, context_length) for task in tasks)):
        print(f"warning: {line}", file=sys.stderr)


# what compares across runs (metrics/eval.json, dvc exp show); the rest of a result is its speed
METRICS = ("acc", "perplexity", "acc_norm", "acc_norm_chars")
COUNTS = ("examples", "cut")
SPEED = ("seconds", "tokens_per_second")


def flat_metrics(results: dict[str, dict], keys=METRICS + COUNTS) -> dict:
    """{task: result} -> {task_key: value} for the keys of each result among `keys`."""
    return {f"{task}_{key}": result[key] for task, result in results.items() for key in keys if key in result}


def format_results(results: dict[str, dict]) -> str:
    """A table of each task's metrics, then what each measured on: examples, cut ones, precision, speed."""
    lines = [f"{'task':<10} {'metric':<15} {'value':>12}"]
    lines += [f"{task:<10} {metric:<15} {result[metric]:>12.4f}" for task, result in results.items()
              for metric in METRICS if metric in result]
    lines += [f"{task}: {result['examples']:,} examples ({result['cut']:,} cut by the model's context), "
              f"{result['precision']}, {result['seconds']:.1f} s, {result['tokens_per_second']:,.0f} tokens/s"
              for task, result in results.items()]
    return "\n".join(lines)


class ZeroShotProbe:
    """The tasks measured during training (zero_shot.train_tasks every train_every steps), encoded once."""

    def __init__(self, config: ZeroShotConfig, tokenizer: Tokenizer, context_length: int):
        self.every, self.batch_size = config.train_every, config.batch_size
        self.tasks = load_tasks(config.train_tasks, config, tokenizer, config.train_limit)
        self.context_length = context_length

    def __call__(self, model: GPT, runtime: Runtime) -> dict:
        return flat_metrics(evaluate_tasks(model, self.tasks, runtime, self.batch_size), METRICS)
