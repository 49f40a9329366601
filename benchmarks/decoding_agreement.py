"""How close decoding with bf16 or int8 weights stays to fp32, and how fast each is, on a trained model.

    python benchmarks/decoding_agreement.py --model models --tokens data/tokens/val.bin

For each of bf16 and int8 weights against fp32: teacher-forced over every context window of the token
file, the share of positions whose likeliest next token is fp32's and the cross-entropy of each;
greedy decoding from prompts (the pipeline's generate.prompts and 16-token starts spread over the token
file), how many tokens agree with fp32 before the first that differs; and greedy batch-1 tokens/s of
each, interleaved as `gptcore bench` times them. Prints JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from gptcore.bench import greedy, interleaved, machine
from gptcore.data.token_files import load_tokens
from gptcore.formats.loading import load_model
from gptcore.model.inference import greedy_agreement, next_token_agreement, prepare_for_inference
from gptcore.model.runtime import setup_runtime
from gptcore.model.tokenizer import Tokenizer
from gptcore.params import load_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models")
    parser.add_argument("--tokens", default="data/tokens/val.bin")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--starts", type=int, default=8, help="prompts taken from the token file")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    runtime = setup_runtime("cpu", "fp32")
    started = time.perf_counter()
    reference = prepare_for_inference(load_model(args.model), "fp32", runtime.device)
    tokens = torch.from_numpy(load_tokens(args.tokens).astype("int64"))
    tokenizer = Tokenizer()
    prompts = [torch.tensor(tokenizer.encode(p)) for p in load_params(args.params).generate.prompts]
    spacing = (len(tokens) - 16) // args.starts
    prompts += [tokens[i * spacing:i * spacing + 16] for i in range(args.starts)]
    result = {"machine": machine(runtime), "model": args.model, "tokens": args.tokens, "weights": {}}
    variants = {"fp32": reference}
    for weights in ("bf16", "int8"):
        candidate = prepare_for_inference(copy.deepcopy(reference), weights, runtime.device)
        variants[weights] = candidate
        result["weights"][weights] = {
            "teacher_forced": next_token_agreement(reference, candidate, tokens),
            "greedy_tokens_equal_before_first_difference": greedy_agreement(reference, candidate, prompts,
                                                                             args.new_tokens),
            "greedy_new_tokens": args.new_tokens}
    prompt = prompts[0][None]
    timing = interleaved({w: greedy(net, prompt, args.new_tokens, False) for w, net in variants.items()},
                         runtime.device, min_rounds=args.rounds, max_rounds=args.rounds)
    result["greedy_batch1_tokens_per_s"] = {w: args.new_tokens / statistics.median(s)
                                            for w, s in timing["seconds"].items()}
    result["seconds"] = time.perf_counter() - started
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
