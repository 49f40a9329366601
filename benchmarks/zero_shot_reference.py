"""gptcore's zero-shot LAMBADA against lm-evaluation-harness's `lambada_openai` on the same model, in one process:
the model exported as a Hugging Face folder (gptcore export-hf) for the harness's HFLM, both in fp32 at the same
batch size and threads, their accuracy and perplexity side by side, and each one's scoring time (the harness's
forward passes, gptcore's score_requests; building the task is apart) and tokens per second.

    PYTHONPATH=. python benchmarks/zero_shot_reference.py --model models --json benchmarks/results-zero-shot-zen4.json

--model is anything gptcore loads (default: the root pipeline's models/); LAMBADA comes from zero_shot's source
(the mirror offline). Needs lm-evaluation-harness (pip install 'lm_eval[hf]').
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from gptcore.data.corpus import locate_file
from gptcore.evaluation.harness import run_harness
from gptcore.evaluation.zero_shot import load_task, score_requests
from gptcore.formats.hf_export import export_folder
from gptcore.formats.loading import load_model
from gptcore.machine import cpu_model
from gptcore.model.runtime import setup_runtime
from gptcore.model.tokenizer import Tokenizer
from gptcore.settings.zero_shot import ZeroShotConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models", help="a model gptcore loads")
    parser.add_argument("--limit", type=int, default=None, help="the first this many passages (default: all 5,153)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--json", default="benchmarks/results-zero-shot.json", help="where the results go")
    args = parser.parse_args()

    runtime = setup_runtime("cpu", "fp32")
    config = ZeroShotConfig()
    model = load_model(args.model).eval()
    task = load_task("lambada", config, Tokenizer(), args.limit)
    started = time.perf_counter()
    loglikelihoods, greedy, tokens = score_requests(model, task.requests, runtime, args.batch_size)
    seconds = time.perf_counter() - started
    ours = task.metrics(loglikelihoods, greedy)
    print(json.dumps({"gptcore": ours, "seconds": seconds}, indent=2), flush=True)
    with tempfile.TemporaryDirectory() as folder:
        export_folder(model, folder)  # with its tokenizer, which the harness reads
        harness = run_harness(folder, "lambada", locate_file(config.lambada_source, config.lambada_sha256,
                                                             "zero_shot.lambada_source", "JSONL",
                                                             "zero_shot.lambada_sha256"),
                              limit=args.limit, batch_size=args.batch_size)
    reference = harness["requests"]
    result = {
        "machine": cpu_model(), "torch": torch.__version__, "threads": runtime.threads, "model": args.model,
        "parameters": model.num_parameters(), "context_length": model.config.context_length,
        "batch_size": args.batch_size, "precision": "fp32", "passages": task.examples,
        "cut": task.cut(model.config.context_length), "tokens": tokens,
        "gptcore": {**ours, "scoring_seconds": seconds, "tokens_per_second": tokens / seconds},
        "lm_eval": {"acc": harness["metrics"]["acc"], "perplexity": harness["metrics"]["perplexity"],
                    "scoring_seconds": harness["scoring_seconds"], "run_seconds": harness["seconds"],
                    "tokens_per_second": tokens / harness["scoring_seconds"]},
        "greedy_flags_equal": sum(ours_flag == flag for ours_flag, (_, flag) in zip(greedy, reference)),
        "max_relative_loglikelihood_difference": max(abs(ll - theirs) / max(abs(theirs), 1e-12)
                                                     for ll, (theirs, _) in zip(loglikelihoods, reference)),
    }
    result["speedup"] = result["lm_eval"]["scoring_seconds"] / result["gptcore"]["scoring_seconds"]
    print(json.dumps(result, indent=2))
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
