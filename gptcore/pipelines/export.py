"""A model gptcore made, where people run models: a complete Hugging Face folder of any of its models (the
language model, the instruction model with its template as the chat template, the classifier as
GPT2ForSequenceClassification, LoRA adapters merged) with a model card that says what made it, and
llama.cpp's GGUF with an Ollama Modelfile beside it. `gptcore export-hf` and `gptcore export-gguf` run them;
the instruction pipeline's export stage writes them as DVC outputs and logs them to the model's MLflow run.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import ConfigError, MissingInputError
from ..formats.gguf import check_vocabulary, ollama_modelfile, write_gguf
from ..formats.hf_export import ClassifierHead, export_folder, generation_config
from ..formats.loading import load_model
from ..formats.model_folder import CLASSIFIER_FILE
from ..model.gpt import GPT
from ..model.lora import merge_lora
from ..params import Params
from ..settings.export import GGUF_TYPES
from ..settings.generate import GenerateConfig
from ..tasks.classification import load_classifier
from ..tasks.instruction_tuning import INSTRUCT_FILE, load_instruct_model
from ..tracking.models import share_logged_files
from ..tracking.runs import Tracker, recorded_run
from .finetune import pipeline_tracking

# the params that name what a model was made from, by pipeline: its base and its data
MADE_FROM = (("classify.init_from", "classify.source"), ("instruct.init_from", "instruct.source"),
             ("model.init_from", "data.source"))
POSITION_NOTE = (
    "This classifier reads the last of its {max_length} positions after padding a text with token {pad_id} "
    "(`classify.position: last`, the book's way). Hugging Face's GPT2ForSequenceClassification reads the last "
    "token that is not padding, so `pipeline(\"text-classification\")` answers from another position than "
    "`gptcore classify` and its scores differ; train with `classify.position: last_token` for an export that "
    "answers as gptcore does.")


@dataclass
class Exportable:
    """A model read from a folder gptcore wrote, with what its exports say beyond the weights."""
    model: GPT
    kind: str  # what the export is, for the command's last line and the card
    base: str | None = None
    head: ClassifierHead | None = None
    template: tuple[str, str, str] | None = None  # an instruction model's prompt, input section, response marker
    generation: dict | None = None
    notes: list[str] = field(default_factory=list)


def read_exportable(source, n_heads: int | None = None) -> Exportable:
    """The model in source (a classifier's, an instruction model's or a language model's folder, adapters, a
    Hugging Face folder, a book file, an official name), its LoRA adapters merged."""
    folder = Path(source)
    if (folder / CLASSIFIER_FILE).is_file():
        classifier, info = load_classifier(folder)
        notes = [] if info["position"] == "last_token" else [POSITION_NOTE.format(**info)]
        return Exportable(merged(classifier.model), f"a classifier of {', '.join(info['labels'])}", info.get("base"),
                          head=ClassifierHead(tuple(info["labels"]), info["pad_id"], info["max_length"]), notes=notes)
    if (folder / INSTRUCT_FILE).is_file():
        model, template, info = load_instruct_model(folder)
        return Exportable(merged(model), "an instruction model", info.get("base"),
                          template=(template.prompt, template.input, template.response),
                          generation=generation_config(max_new_tokens=info["max_new_tokens"], temperature=0.0,
                                                       top_k=None, top_p=None))
    sampler = GenerateConfig()
    return Exportable(merged(load_model(source, n_heads=n_heads)), "a language model",
                      generation=generation_config(max_new_tokens=sampler.max_new_tokens,
                                                   temperature=sampler.temperature, top_k=sampler.top_k,
                                                   top_p=sampler.top_p))


def merged(model: GPT) -> GPT:
    """The model with its LoRA adapters (if any) folded into its weights: what other programs can hold."""
    merge_lora(model)
    return model


def check_output(out) -> None:
    if not Path(out).parent.is_dir():
        raise MissingInputError(f"{Path(out).parent} does not exist: create it, or write the export elsewhere")


def export_hugging_face(source, out, *, n_heads: int | None = None) -> tuple[Path, str]:
    """source as a Hugging Face folder at out, with its model card; returns the folder and what it holds."""
    check_output(out)
    model = read_exportable(source, n_heads)
    for note in model.notes:
        print(f"warning: {note}", file=sys.stderr)
    run_id, run = recorded_run(source) if Path(source).is_dir() else (None, None)
    folder = export_folder(model.model, out, generation=model.generation, template=model.template,
                       classifier=model.head, card=model_card(model, run_id, run))
    architecture = "GPT2ForSequenceClassification" if model.head else "GPT2LMHeadModel"
    return folder, f"{model.kind} ({architecture}{', its template the chat template' if model.template else ''})"


def export_gguf(source, out, weights: str, *, n_heads: int | None = None) -> tuple[Path, Path]:
    """source as llama.cpp's GGUF at out (weights f32 | f16 | q8_0) and an Ollama Modelfile beside it; returns
    both paths. A classifier is refused: llama.cpp has no classification head."""
    check_output(out)
    if weights not in GGUF_TYPES:
        raise ConfigError(f"--type {weights!r} is not a GGUF type gptcore writes; choose {', '.join(GGUF_TYPES)}")
    if (Path(source) / CLASSIFIER_FILE).is_file():
        raise ConfigError(f"{source} is a classifier: llama.cpp has no classification head, so it has no GGUF; "
                          "export it for transformers (gptcore export-hf)")
    model = read_exportable(source, n_heads)
    check_vocabulary(model.model.config.vocab_size)
    with tempfile.TemporaryDirectory() as folder:  # GGUF is written from the Hugging Face folder, as llama.cpp does
        export_folder(model.model, folder, generation=model.generation, template=model.template)
        path = write_gguf(folder, out, weights, name=Path(out).stem)
    modelfile = path.with_name("Modelfile")
    atomic_write_text(modelfile, ollama_modelfile(path.name, model.model.config.context_length, model.generation,
                                                  model.template))
    return path, modelfile


def export_pipeline_model(params: Params, section: str, *, model_dir, out_dir) -> list[Path]:
    """The model of params.yaml's pipeline `section` (instruct) in model_dir, exported as `<section>_export` says,
    into out_dir: hugging_face/ and <section>-<type>.gguf with its Modelfile. What it wrote is logged to the model's
    MLflow run (export/), its files hard links to out_dir's: one copy on disk. Returns the paths written."""
    settings, out_dir = getattr(params, f"{section}_export"), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)  # DVC's output, empty when nothing is exported
    written = []
    if settings.hugging_face:
        written.append(export_hugging_face(model_dir, out_dir / "hugging_face")[0])
    if settings.gguf:
        written.extend(export_gguf(model_dir, out_dir / f"{section}-{settings.gguf}.gguf", settings.gguf))
    if written and params.tracking.enabled:
        tracker = Tracker.attach(pipeline_tracking(params, section), model_dir, {}, f"export-{section}")
        tracker.client.log_artifacts(tracker.run_id, str(out_dir), "export")
        share_logged_files(f"{tracker.client.get_run(tracker.run_id).info.artifact_uri}/export", out_dir)
        tracker.finish()
    return written


def model_card(model: Exportable, run_id: str | None, run) -> str:
    """README.md of the folder: what the model is, what it was made from, its evaluation and the run."""
    config, pipeline_tag = model.model.config, "text-classification" if model.head else "text-generation"
    params = run.data.params if run else {}
    made_from = next(((params[b], params[d]) for b, d in MADE_FROM if b in params and d in params), (None, None))
    base = model.base or made_from[0]
    metrics = {name.removeprefix("evaluate/"): value for name, value in sorted(run.data.metrics.items())
               if name.startswith("evaluate/") and "second" not in name} if run else {}
    kind = (f"{model.kind} (its prompt template is the tokenizer's chat template: a `user` message is the "
            "instruction, an `input` message the input)") if model.template else model.kind
    lines = ["---", "library_name: transformers", f"pipeline_tag: {pipeline_tag}", "tags: [gpt2, gptcore]", "---", "",
             "# A GPT-2 model made with gptcore", "",
             f"This is {kind}: GPT-2 with {model.model.num_parameters():,} parameters ({config.n_layers} layers, "
             f"{config.n_heads} heads, width {config.emb_dim}, context {config.context_length} tokens), "
             "exported by `gptcore export-hf`.", ""]
    if base or made_from[1]:
        lines += ["## Made from", ""] + ([f"- base: `{base}`"] if base else []) + \
                 ([f"- data: `{made_from[1]}`"] if made_from[1] else []) + [""]
    if metrics:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"] + \
                 [f"| {name} | {value:.6g} |" for name, value in metrics.items()] + [""]
    if run_id:
        where = (f"in experiment {run.info.experiment_id} of the MLflow store it was recorded in" if run
                 else "(not in the MLflow store this export could read)")
        lines += ["## Run", "", f"MLflow run `{run_id}` {where}" +
                  (f", git commit `{run.data.tags['git_commit']}`" if run and "git_commit" in run.data.tags else "")
                  + ".", ""]
    call = ('[{"role": "user", "content": "Name three primary colors."}]' if model.template
            else '"Free entry to win a prize, text WIN now"' if model.head else '"Every effort moves you"')
    lines += ["## Use", "", "```python", "from transformers import pipeline", "",
              f'pipe = pipeline("{pipeline_tag}", model="path/to/this/folder")', f"print(pipe({call}))", "```", ""]
    for note in model.notes:
        lines += ["## Note", "", note, ""]
    return "\n".join(lines)
