"""The `gptcore` command: generate, bench, export-hf, export-lfs, info."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .stage import USER_ERRORS


def load_any(args):
    """args.model: a gptcore model folder, an HF GPT-2 folder, a book file (model.pth) or an official name."""
    from .checkpoint import load_model
    from .hf import OFFICIAL_MODELS, load_official

    if args.model in OFFICIAL_MODELS:
        return load_official(args.model)
    return load_model(args.model, n_heads=args.n_heads)


def cmd_generate(args) -> None:
    import torch

    from .runtime import cast_for_inference
    from .sampling import check_prompt, generate, validate_sampler
    from .tokenizer import Tokenizer

    validate_sampler(args.temperature, args.top_k, args.top_p, args.max_new_tokens)
    model = cast_for_inference(load_any(args), args.weights).eval()
    tokenizer = Tokenizer()
    prompt_ids = tokenizer.encode(args.prompt)
    check_prompt(len(prompt_ids), model.config.context_length)
    print(args.prompt, end="", flush=True)
    pending: list[int] = []

    def stream(token):  # decode whole characters only: a multi-byte character can span tokens
        pending.append(int(token[0, 0]))
        text = tokenizer.decode(pending)
        if "\ufffd" not in text:
            print(text, end="", flush=True)
            pending.clear()

    generate(model, torch.tensor([prompt_ids]), args.max_new_tokens, args.temperature, args.top_k, args.top_p,
             None if args.no_eos else tokenizer.eot_id, seed=args.seed, on_token=stream)
    print(tokenizer.decode(pending))


def cmd_bench(args) -> None:
    from .atomic import atomic_write_text
    from .bench import format_table, run_benchmark

    result = run_benchmark(tuple(args.context), args.rounds, args.device, args.tokenize_mb,
                           Path(args.corpus) if args.corpus else None,
                           tuple(args.precision) if args.precision else None)
    print(format_table(result))
    atomic_write_text(args.json, json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")


def cmd_export_hf(args) -> None:
    from .hf import export_hf

    folder = export_hf(load_any(args), args.out)
    print(f"wrote {folder}/config.json and {folder}/model.safetensors (load with "
          f"transformers.GPT2LMHeadModel.from_pretrained({str(folder)!r}))")


def cmd_export_lfs(args) -> None:
    from .lfs import export_lfs

    path = export_lfs(load_any(args), args.out)
    print(f"wrote {path} (in the book's notebooks: model = GPTModel(cfg); "
          f"model.load_state_dict(torch.load({str(path)!r}, weights_only=True)))")


def cmd_info(args) -> None:
    model = load_any(args)
    config = model.config.to_dict()
    print(json.dumps({"parameters": model.num_parameters(),
                      "size_mb_fp32": round(model.num_parameters() * 4 / 2 ** 20, 1), "config": config}, indent=2))


MODEL_HELP = "gptcore model folder, HF GPT-2 folder, the book's model.pth or an official name (gpt2 ...)"


def add_n_heads(command: argparse.ArgumentParser) -> None:
    command.add_argument("--n-heads", type=int, default=None,
                         help="attention heads of a book file (model.pth), whose tensors do not hold the count; "
                              "default: GPT-2's 64-wide heads (width / 64)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptcore", description="GPT-2 models: generate, benchmark, convert.")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="continue a prompt, streaming tokens as they come")
    gen.add_argument("prompt")
    gen.add_argument("--model", default="models", help=MODEL_HELP)
    add_n_heads(gen)
    gen.add_argument("--max-new-tokens", type=int, default=50)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--no-eos", action="store_true", help="do not stop at <|endoftext|>")
    gen.add_argument("--weights", choices=("fp32", "bf16"), default="fp32",
                     help="bf16 halves the memory read per token: faster decoding on CPUs")
    gen.set_defaults(func=cmd_generate)

    bench = commands.add_parser("bench", help="benchmark gptcore against Hugging Face GPT-2 on this machine")
    bench.add_argument("--context", type=int, nargs="+", default=[256, 1024])
    bench.add_argument("--rounds", type=int, default=3, help="timed rounds per variant (after one warm-up)")
    bench.add_argument("--device", default="auto")
    bench.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=None,
                       help="default: fp32, plus bf16 where the hardware runs it")
    bench.add_argument("--corpus", default=None, help="text file repeated for the tokenization benchmark")
    bench.add_argument("--tokenize-mb", type=int, default=20)
    bench.add_argument("--json", default="benchmarks/results.json")
    bench.set_defaults(func=cmd_bench)

    export = commands.add_parser("export-hf", help="write a model as a Hugging Face GPT-2 folder")
    export.add_argument("model", help=MODEL_HELP)
    export.add_argument("out")
    add_n_heads(export)
    export.set_defaults(func=cmd_export_hf)

    export_book = commands.add_parser("export-lfs", help="write a model as the book's model.pth (LLMs from scratch)")
    export_book.add_argument("model", help=MODEL_HELP)
    export_book.add_argument("out", help="the .pth file to write")
    add_n_heads(export_book)
    export_book.set_defaults(func=cmd_export_lfs)

    info = commands.add_parser("info", help="parameter count and config of a model")
    info.add_argument("model", nargs="?", default="models", help=MODEL_HELP)
    add_n_heads(info)
    info.set_defaults(func=cmd_info)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (*USER_ERRORS, RuntimeError) as error:
        print(f"gptcore {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
