"""The `gptcore` command: generate, classify, instruct, eval, bench, export-hf, export-gguf, export-lfs, ui, recipe,
info."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .errors import GptcoreError, keys_renamed
from .settings import default, doc, rule
from .settings.bench import BenchConfig
from .settings.evaluate import EvaluateConfig
from .settings.generate import GenerateConfig
from .settings.recipes import RECIPES
from .settings.tracking import TrackingConfig
from .settings.zero_shot import ZeroShotConfig

# the generate section's settings that are also options of `gptcore generate` (its prompt is an argument)
SAMPLER_OPTIONS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "device", "weights")
# the benchmark's schedule, all of it options of `gptcore bench`
BENCH_OPTIONS = ("rounds", "max_rounds", "settled_within")
# the zero_shot and evaluate settings that are options of `gptcore eval` (its --tasks is a comma-separated list)
ZERO_SHOT_OPTIONS = ("limit", "batch_size", "lambada_source", "lambada_sha256", "hellaswag_source",
                     "hellaswag_sha256", "hellaswag_context")
RUNTIME_OPTIONS = ("precision", "device")


def load_any(args):
    """args.model: a gptcore model folder, an HF GPT-2 folder, a book file (model.pth) or an official name."""
    from .formats.loading import load_model

    return load_model(args.model, n_heads=args.n_heads)


def cmd_generate(args) -> None:
    import torch

    from .model.inference import prepare_for_inference
    from .model.runtime import setup_runtime
    from .model.sampling import check_prompt, generate
    from .model.tokenizer import Tokenizer

    settings = GenerateConfig(stop_at_eos=not args.no_eos, **{name: getattr(args, name) for name in SAMPLER_OPTIONS})
    runtime = setup_runtime(settings.device, "fp32")
    model = prepare_for_inference(load_any(args), settings.weights, runtime.device)
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

    generate(model, torch.tensor([prompt_ids], device=runtime.device), settings.max_new_tokens,
             temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
             eos_id=tokenizer.eot_id if settings.stop_at_eos else None, seed=settings.seed, on_token=stream)
    print(tokenizer.decode(pending))


def cmd_classify(args) -> None:
    from .model.runtime import setup_runtime
    from .model.tokenizer import Tokenizer
    from .tasks.classification import classify, load_classifier

    classifier, info = load_classifier(args.model)
    (result,) = classify(classifier, info, [args.text], Tokenizer(), setup_runtime("cpu", "fp32"))
    print(f"{result['label']}\t" + "  ".join(f"{label} {p:.4f}" for label, p in result["probabilities"].items()))


def cmd_instruct(args) -> None:
    from .model.runtime import setup_runtime
    from .model.tokenizer import Tokenizer
    from .tasks.instruction_tuning import answer, load_instruct_model

    model, template, info = load_instruct_model(args.model)
    (response,) = answer(model, template, info, [{"instruction": args.instruction, "input": args.input}], Tokenizer(),
                         setup_runtime("cpu", "fp32"), max_new_tokens=args.max_new_tokens)
    print(response)


def option_names(section: str):
    """Errors that name `section.some_key` name the option --some-key instead."""
    return keys_renamed(section, lambda key: "--" + key.replace("_", "-"))


def cmd_eval(args) -> None:
    from .atomic import atomic_write_text
    from .evaluation.zero_shot import evaluate_tasks, format_results, load_tasks, warn_of_cuts
    from .model.runtime import setup_runtime
    from .model.tokenizer import Tokenizer

    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    with option_names("zero_shot"):
        config = ZeroShotConfig(tasks=names, **{name: getattr(args, name) for name in ZERO_SHOT_OPTIONS})
        tasks = load_tasks(names, config, Tokenizer(), config.limit)
    runtime = setup_runtime(args.device, args.precision)
    model = load_any(args).to(runtime.device)
    warn_of_cuts(tasks, model.config.context_length)
    results = evaluate_tasks(model, tasks, runtime, config.batch_size)
    print(format_results(results))
    if args.json:
        atomic_write_text(args.json, json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


def cmd_bench(args) -> None:
    from .atomic import atomic_write_text
    from .bench import format_table, run_benchmark

    with option_names("bench"):  # checked before any work
        schedule = BenchConfig(**{name: getattr(args, name) for name in BENCH_OPTIONS})
    result = run_benchmark(tuple(args.context), **dataclasses.asdict(schedule), device_name=args.device,
                           tokenize_mb=args.tokenize_mb, corpus=Path(args.corpus) if args.corpus else None,
                           precisions=tuple(args.precision) if args.precision else None, nanogpt=args.nanogpt)
    print(format_table(result))
    atomic_write_text(args.json, json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")


def cmd_export_hf(args) -> None:
    from .pipelines.export import export_hugging_face

    folder, kind = export_hugging_face(args.model, args.out, n_heads=args.n_heads)
    print(f"wrote {folder}: {kind} with GPT-2's tokenizer and a model card (load it with "
          f"transformers.pipeline(..., model={str(folder)!r}) or AutoModel.from_pretrained)")


def cmd_export_gguf(args) -> None:
    from .pipelines.export import export_gguf

    path, modelfile = export_gguf(args.model, args.out, args.type, n_heads=args.n_heads)
    print(f"wrote {path} ({args.type}) and {modelfile} (llama.cpp: Llama(model_path={str(path)!r}); Ollama: "
          f"ollama create NAME -f {modelfile})")


def cmd_export_lfs(args) -> None:
    from .formats.book import export_lfs

    path = export_lfs(load_any(args), args.out)
    print(f"wrote {path} (in the book's notebooks: model = GPTModel(cfg); "
          f"model.load_state_dict(torch.load({str(path)!r}, weights_only=True)))")


def cmd_info(args) -> None:
    model = load_any(args)
    config = model.config.to_dict()
    print(json.dumps({"parameters": model.num_parameters(),
                      "size_mb_fp32": round(model.num_parameters() * 4 / 2 ** 20, 1), "config": config}, indent=2))


MODEL_HELP = ("gptcore model folder, HF GPT-2 folder, the book's model.pth or an official name (gpt2 ...) "
              "(default: %(default)s)")


def cmd_ui(args) -> None:
    from .params import load_params
    from .tracking.runs import repo_root
    from .tracking.ui import serve_ui

    params_file = repo_root() / "params.yaml"
    experiment = args.experiment or (load_params(params_file).tracking.experiment if params_file.is_file()
                                     else TrackingConfig().experiment)
    serve_ui(experiment, args.host, args.port, open_browser=not args.no_browser)


def add_n_heads(command: argparse.ArgumentParser) -> None:
    command.add_argument("--n-heads", type=int, default=None,
                         help="attention heads of a book file (model.pth), whose tensors do not hold the count; "
                              "default: GPT-2's for a file of one of its four sizes, else required")


def add_setting_options(command: argparse.ArgumentParser, settings, names) -> None:
    """The settings dataclass's fields `names` as --options, with their params.yaml defaults and docs."""
    for name in names:
        definition = settings.__dataclass_fields__[name]
        expected = rule(definition)
        parse = {"int": int, "float": float}.get(expected.kind, str)
        command.add_argument(f"--{name.replace('_', '-')}", default=default(definition),
                             type=(lambda text, parse=parse: None if text in ("null", "none") else parse(text))
                             if expected.nullable else parse, choices=expected.choices or None,
                             help=f"{doc(definition)} (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gptcore", description="GPT-2 models: generate, benchmark, convert.")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="continue a prompt, streaming tokens as they come")
    gen.add_argument("prompt", help="the text to continue")
    gen.add_argument("--model", default="models", help=MODEL_HELP)
    add_n_heads(gen)
    add_setting_options(gen, GenerateConfig, SAMPLER_OPTIONS)
    gen.add_argument("--no-eos", action="store_true", help="do not stop at <|endoftext|>")
    gen.set_defaults(func=cmd_generate)

    classify = commands.add_parser("classify", help="classify a text with a fine-tuned classifier: its label, then "
                                                    "each class's probability")
    classify.add_argument("text", help="the text to classify")
    classify.add_argument("--model", default="data/classifier/model",
                          help="the classifier folder the classifier pipeline wrote (default: %(default)s)")
    classify.set_defaults(func=cmd_classify)

    instruct = commands.add_parser("instruct", help="answer an instruction with a fine-tuned instruction model "
                                                    "(greedy, in the template it was trained on)")
    instruct.add_argument("instruction", help="the task, e.g. \"Rewrite the sentence in passive voice.\"")
    instruct.add_argument("--input", default="", help="the text the instruction works on (default: none)")
    instruct.add_argument("--model", default="data/instruct/model",
                          help="the folder the instruction pipeline wrote (default: %(default)s)")
    instruct.add_argument("--max-new-tokens", type=int, default=None,
                          help="at most this many tokens (default: instruct.max_new_tokens it was trained with)")
    instruct.set_defaults(func=cmd_instruct)

    evaluation = commands.add_parser("eval", help="zero-shot benchmarks (LAMBADA, HellaSwag) of a model, as "
                                                  "lm-evaluation-harness scores them: a table of their metrics")
    evaluation.add_argument("--tasks", default="lambada", help="comma-separated: lambada, hellaswag "
                                                               "(default: %(default)s)")
    evaluation.add_argument("--model", default="models", help=MODEL_HELP)
    add_n_heads(evaluation)
    add_setting_options(evaluation, ZeroShotConfig, ZERO_SHOT_OPTIONS)
    add_setting_options(evaluation, EvaluateConfig, RUNTIME_OPTIONS)
    evaluation.add_argument("--json", default=None, help="also write each task's result to this JSON file "
                                                          "(default: only the table)")
    evaluation.set_defaults(func=cmd_eval)

    bench = commands.add_parser("bench", help="benchmark gptcore against Hugging Face GPT-2 on this machine")
    bench.add_argument("--context", type=int, nargs="+", default=[256, 1024],
                       help="the context lengths (tokens) to time training and inference at (default: 256 1024)")
    add_setting_options(bench, BenchConfig, BENCH_OPTIONS)
    bench.add_argument("--device", default="auto", help="cpu, cuda, mps or auto: cuda, then mps, then cpu "
                                                         "(default: %(default)s)")
    bench.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=None,
                       help="the precisions to time (default: fp32, plus bf16 where the hardware runs it)")
    bench.add_argument("--corpus", default=None, help="text file repeated for the tokenization benchmark "
                                                       "(default: no tokenization rows)")
    bench.add_argument("--tokenize-mb", type=int, default=20,
                       help="megabytes of that text to tokenize (default: %(default)s)")
    bench.add_argument("--nanogpt", type=Path, default=None,
                       help="a nanoGPT checkout: its model.py joins the training and evaluation rows "
                            "(default: no nanoGPT rows)")
    bench.add_argument("--json", default="benchmarks/results.json",
                       help="where to write every measurement (default: %(default)s)")
    bench.set_defaults(func=cmd_bench)

    export = commands.add_parser("export-hf", help="write a model as a Hugging Face folder that transformers loads "
                                                   "offline (a classifier as GPT2ForSequenceClassification)")
    export.add_argument("model", help=MODEL_HELP.replace("gptcore model folder", "gptcore model, classifier, "
                                                         "instruction model or adapter folder"))
    export.add_argument("out", help="the folder to write (weights, config, tokenizer, generation config, "
                                    "README.md); its parent must exist")
    add_n_heads(export)
    export.set_defaults(func=cmd_export_hf)

    export_gguf = commands.add_parser("export-gguf", help="write a language or instruction model as llama.cpp's GGUF, "
                                                          "with an Ollama Modelfile beside it")
    export_gguf.add_argument("model", help=MODEL_HELP.replace("gptcore model folder", "gptcore model, instruction "
                                                              "model or adapter folder"))
    export_gguf.add_argument("out", help="the .gguf file to write (its folder must exist; Modelfile goes beside it)")
    export_gguf.add_argument("--type", default="f32", help="the weights' type: f32 | f16 | q8_0 (norms, biases "
                                                           "and positions stay f32, as llama.cpp's converter keeps "
                                                           "them) (default: %(default)s)")
    add_n_heads(export_gguf)
    export_gguf.set_defaults(func=cmd_export_gguf)

    export_book = commands.add_parser("export-lfs", help="write a model as the book's model.pth (LLMs from scratch)")
    export_book.add_argument("model", help=MODEL_HELP)
    export_book.add_argument("out", help="the .pth file to write")
    add_n_heads(export_book)
    export_book.set_defaults(func=cmd_export_lfs)

    ui = commands.add_parser("ui", help="the MLflow UI on the project's store, opened at the charts of its runs")
    ui.add_argument("--experiment", default=None,
                    help="the experiment to show (default: the pretraining pipeline's, tracking.experiment of the "
                         "project's params.yaml; the others are listed: classify.experiment, instruct.experiment)")
    ui.add_argument("--host", default="127.0.0.1", help="the address to serve on (default: %(default)s)")
    ui.add_argument("--port", type=int, default=5000, help="the port to serve on (default: %(default)s)")
    ui.add_argument("--no-browser", action="store_true", help="print the URL only; by default a browser opens it "
                                                              "where one can be started")
    ui.set_defaults(func=cmd_ui)

    recipe = commands.add_parser("recipe", help="a ready experiment's params as dvc exp run options: dvc exp run -n "
                                                "NAME $(gptcore recipe NAME)")
    recipe.add_argument("name", choices=sorted(RECIPES), help="gpt2-124m: build-nanogpt's GPT-2 124M on FineWeb-Edu")
    recipe.add_argument("--params", default="params.yaml", help="the params file they apply to (default: %(default)s)")
    recipe.set_defaults(func=cmd_recipe)

    info = commands.add_parser("info", help="parameter count and config of a model")
    info.add_argument("model", nargs="?", default="models", help=MODEL_HELP)
    add_n_heads(info)
    info.set_defaults(func=cmd_info)
    return parser


def cmd_recipe(args) -> None:
    from .params import read_yaml, recipe_options

    print(" ".join(recipe_options(args.name, read_yaml(Path(args.params)))))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except GptcoreError as error:
        print(f"gptcore {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
