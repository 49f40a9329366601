"""Batch-1 greedy decoding of GPT-2 124M in llama.cpp (the field's reference for CPU decoding) beside gptcore
and Hugging Face, in one process, interleaved round by round as `gptcore bench` times its variants.

    python benchmarks/decoding_engines.py --json benchmarks/results-decoding-<machine>.json

One model (GPT-2's layout, its init, a fixed seed) is timed as: llama.cpp on its q8_0 and f16 GGUF exports
(`gptcore export-gguf`, read by llama-cpp-python), gptcore with int8, fp32 and, where the CPU runs bf16 matmuls
natively, bf16 weights, and transformers' GPT2LMHeadModel in fp32 (`generate(use_cache=True)`). Each decodes
--new-tokens tokens after the same --prompt-tokens-token prompt, never stopping early (random weights may pick
<|endoftext|>), on every physical core. A row gives tokens/s as the median of the rounds with their minimum and
maximum, and its ratio to llama.cpp q8_0, round by round. Needs llama-cpp-python (a source build: see
docs/reference.md).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import tempfile
from pathlib import Path

import torch

from gptcore.bench import greedy, hf_twin, interleaved, machine, paired_ratios, spread, timed_rows
from gptcore.formats.model_folder import save_model
from gptcore.model.gpt import GPT
from gptcore.model.inference import prepare_for_inference
from gptcore.model.runtime import fast_bf16, setup_runtime
from gptcore.pipelines.export import export_gguf
from gptcore.settings.model import VOCAB_SIZE, ModelConfig

BASE = "llama.cpp q8_0"


def llama_greedy(llama, prompt: list[int], new_tokens: int):
    """llama.cpp's decoding of new_tokens after prompt, greedy, from an empty cache each time."""
    def run():
        llama.reset()
        produced = list(itertools.islice(llama.generate(prompt, top_k=1, temp=0.0, reset=True), new_tokens))
        assert len(produced) == new_tokens
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--prompt-tokens", type=int, default=8)
    parser.add_argument("--min-rounds", type=int, default=3)
    parser.add_argument("--max-rounds", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    from llama_cpp import Llama, __version__ as llama_version

    runtime = setup_runtime("cpu", "fp32")
    torch.manual_seed(123)
    model = GPT(ModelConfig.from_preset("gpt2-small", qkv_bias=True)).eval()
    prompt = torch.randint(0, VOCAB_SIZE, (1, args.prompt_tokens))
    variants, skipped = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        save_model(model, Path(folder) / "model")
        for weights in ("q8_0", "f16"):
            path, _ = export_gguf(Path(folder) / "model", Path(folder) / f"model-{weights}.gguf", weights)
            llama = Llama(model_path=str(path), n_ctx=model.config.context_length, n_threads=runtime.threads,
                          n_threads_batch=runtime.threads, n_batch=args.prompt_tokens, verbose=False)
            variants[f"llama.cpp {weights}"] = llama_greedy(llama, prompt[0].tolist(), args.new_tokens)
    for weights in ("int8", "bf16", "fp32"):
        if weights == "bf16" and not fast_bf16(runtime.device):
            skipped[f"gptcore {weights}"] = "bf16 matmuls are emulated on this CPU (~100x slower): not timed"
            continue
        net = prepare_for_inference(copy.deepcopy(model), weights, runtime.device)
        variants[f"gptcore {weights}"] = greedy(net, prompt, args.new_tokens, False)
    variants["HF fp32"] = greedy(hf_twin(model), prompt, args.new_tokens, True)
    pairs = [(name, BASE) for name in variants if name != BASE]
    timing = interleaved(variants, runtime.device, pairs=pairs, min_rounds=args.min_rounds,
                         max_rounds=args.max_rounds)
    ratios = paired_ratios(timing["seconds"], pairs)
    rows = timed_rows("greedy decoding, batch 1", timing, args.new_tokens, {})
    for row in rows:
        if (row["impl"], BASE) in ratios:  # its seconds over llama.cpp q8_0's: how many times slower
            row["against"], row["slower"] = BASE, spread(ratios[(row["impl"], BASE)])
    result = {"machine": machine(runtime), "llama_cpp_python": llama_version, "new_tokens": args.new_tokens,
              "prompt_tokens": args.prompt_tokens, "rows": rows, "not_timed": skipped}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    print(f"\n{result['machine']}; llama-cpp-python {llama_version}; {timing['rounds']} rounds "
          f"({'settled' if timing['settled'] else 'not settled'})")
    print("| engine, weights | tokens/s (median, min-max) | seconds per round vs llama.cpp q8_0 (median, min-max) |")
    print("|---|---|---|")
    for row in rows:
        slower = row.get("slower")
        ratio = (f"{slower['median']:.2f}x ({slower['min']:.2f}-{slower['max']:.2f})" if slower else "1 (the base)")
        print(f"| {row['impl']} | {row['tokens_per_s']:.1f} ({row['tokens_per_s_min']:.1f}-"
              f"{row['tokens_per_s_max']:.1f}) | {ratio} |")
    for name, why in skipped.items():
        print(f"| {name} | {why} | |")


if __name__ == "__main__":
    main()
