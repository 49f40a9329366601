"""Scoring instruction responses: ROUGE-L against the references offline, and an LLM judge over HTTP as
the book's chapter 7 asks Llama 3 through Ollama (query_model, generate_model_scores).

ROUGE-L is Google's `rouge-score` package (the implementation Hugging Face `evaluate` wraps, and the
metric Self-Instruct and Alpaca-style evaluations report): the F-measure of the longest common
subsequence of words, its own tokenizer, no stemming. The judge speaks Ollama's POST /api/chat (the
book's request: options seed, temperature 0, num_ctx; a streamed answer read line by line) or the
OpenAI-compatible POST /v1/chat/completions that Ollama, vLLM and llama.cpp's server also serve.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

from ..errors import GptcoreError
from ..settings.judge import JudgeConfig


class JudgeUnreachable(GptcoreError):
    pass


def rouge_l(references: list[str], responses: list[str]) -> list[float]:
    """Each response's ROUGE-L F-measure against its reference (0 for an empty response)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return [scorer.score(reference, response)["rougeL"].fmeasure for reference, response in zip(references, responses)]


def request_body(config: JudgeConfig, prompt: str) -> dict:
    messages = [{"role": "user", "content": prompt}]
    if config.api == "ollama":
        return {"model": config.model, "messages": messages,
                "options": {"seed": config.seed, "temperature": 0, "num_ctx": config.num_ctx}}
    return {"model": config.model, "messages": messages, "seed": config.seed, "temperature": 0}


def ask(config: JudgeConfig, prompt: str) -> str:
    """The judge's answer to one prompt."""
    request = urllib.request.Request(config.url, data=json.dumps(request_body(config, prompt)).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=config.timeout_seconds) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, OSError) as error:
        raise JudgeUnreachable(f"the judge at {config.url} did not answer ({getattr(error, 'reason', error)}); start "
                               "it, fix judge.url, or set judge.enabled: false (the responses are kept)") from None
    try:
        if config.api == "openai":
            return json.loads(text)["choices"][0]["message"]["content"]
        # Ollama streams one JSON object per line unless told otherwise (the book reads them all)
        return "".join(json.loads(line)["message"]["content"] for line in text.splitlines() if line.strip())
    except (json.JSONDecodeError, KeyError, IndexError, TypeError):
        raise JudgeUnreachable(f"the judge at {config.url} answered something that is not a {config.api} chat "
                               f"reply ({text[:80]!r}); check judge.api and judge.url") from None


def check_judge(config: JudgeConfig) -> None:
    """Raise JudgeUnreachable (one line) unless something answers HTTP at the judge's host and port."""
    parts = urllib.parse.urlsplit(config.url)
    try:
        urllib.request.urlopen(f"{parts.scheme}://{parts.netloc}/", timeout=min(config.timeout_seconds, 10)).close()
    except urllib.error.HTTPError:
        return  # it answered, if not at its root
    except (urllib.error.URLError, OSError) as error:
        raise JudgeUnreachable(f"the judge at {config.url} is unreachable ({getattr(error, 'reason', error)}); start "
                               "it, fix judge.url, or set judge.enabled: false (the responses are kept)") from None


def parse_score(answer: str) -> int | None:
    """The judge's integer 0-100: the whole answer (the book's int(score)), else its first integer."""
    match = re.fullmatch(r"\s*(\d{1,3})\s*\.?\s*", answer) or re.search(r"\b(\d{1,3})\b", answer)
    score = int(match.group(1)) if match else None
    return score if score is not None and 0 <= score <= 100 else None


def judge_responses(config: JudgeConfig, template, entries: list[dict]) -> list[int | None]:
    """The judge's score of each entry's model_response (None where its answer holds no score 0-100)."""
    scores = []
    for entry in entries:
        prompt = (config.prompt.replace("{prompt}", template.format_prompt(entry["instruction"], entry["input"]))
                  .replace("{output}", entry["output"]).replace("{response}", entry["model_response"]))
        scores.append(parse_score(ask(config, prompt)))
    unscored = scores.count(None)
    if unscored:
        print(f"warning: the judge's answer held no score 0-100 for {unscored} of {len(entries)} responses; they are "
              "left out of judge_score", file=sys.stderr)
    return scores
