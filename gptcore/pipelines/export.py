"""A model gptcore made, where people run models: a complete Hugging Face folder of any of its models (the
language model, the instruction model with its template as the chat template, the classifier as
GPT2ForSequenceClassification, LoRA adapters merged), with a model card that says what made it. `gptcore
export-hf` runs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import MissingInputError
from ..formats.huggingface import ClassifierHead, export_hf, generation_config
from ..formats.loading import load_model
from ..formats.model_folder import CLASSIFIER_FILE
from ..model.gpt import GPT
from ..model.lora import merge_lora
from ..settings.generate import GenerateConfig
from ..tasks.classification import load_classifier
from ..tasks.instruction_tuning import INSTRUCT_FILE, load_instruct_model
from ..tracking.runs import recorded_run

# the params that name what a model was made from, by pipeline: its base and its data
MADE_FROM = (("classify.init_from", "classify.source"), ("instruct.init_from", "instruct.source"),
             ("model.init_from", "data.source"))
POSITION_NOTE = (
    "This classifier reads the last of its {max_length} positions after padding a text with token {pad_id} "
    "(`classify.position: last`, the book's way). Hugging Face's GPT2ForSequenceClassification reads the last "
    "token that is not padding, so `pipeline(\"text-classification\")` answers from another position than "
    "`gptcore classify` and its scores differ; train with `classify.position: last_token` for an export that "
    "answers as gptcore does.")


def export_hugging_face(source, out, *, n_heads: int | None = None) -> tuple[Path, str]:
    """Write source (a model folder gptcore reads: a classifier's, an instruction model's, a language model's
    or adapters) as a Hugging Face folder at out; returns the folder and what it is."""
    if not Path(out).parent.is_dir():
        raise MissingInputError(f"{Path(out).parent} does not exist: create it, or write the export elsewhere")
    folder = Path(source)
    run_id, run = recorded_run(folder) if folder.is_dir() else (None, None)
    if (folder / CLASSIFIER_FILE).is_file():
        classifier, info = load_classifier(folder)
        model = merged(classifier.model)
        head = ClassifierHead(tuple(info["labels"]), info["pad_id"], info["max_length"])
        notes = [] if info["position"] == "last_token" else [POSITION_NOTE.format(**info)]
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        card = model_card(model, "text-classification", f"a classifier of {', '.join(head.labels)}", info.get("base"),
                          run_id, run, notes)
        return export_hf(model, out, classifier=head, card=card), "a classifier (GPT2ForSequenceClassification)"
    if (folder / INSTRUCT_FILE).is_file():
        model, template, info = load_instruct_model(folder)
        model = merged(model)
        generation = generation_config(max_new_tokens=info["max_new_tokens"], temperature=0.0, top_k=None, top_p=None)
        card = model_card(model, "text-generation", "an instruction model (its prompt template is the tokenizer's "
                          "chat template: a `user` message is the instruction, an `input` message the input)",
                          info.get("base"), run_id, run, [])
        return (export_hf(model, out, generation=generation, template=(template.prompt, template.input,
                                                                        template.response), card=card),
                "an instruction model (GPT2LMHeadModel, its template the chat template)")
    model = merged(load_model(source, n_heads=n_heads))
    sampler = GenerateConfig()
    generation = generation_config(max_new_tokens=sampler.max_new_tokens, temperature=sampler.temperature,
                                   top_k=sampler.top_k, top_p=sampler.top_p)
    card = model_card(model, "text-generation", "a language model", None, run_id, run, [])
    return export_hf(model, out, generation=generation, card=card), "a language model (GPT2LMHeadModel)"


def merged(model: GPT) -> GPT:
    """The model with its LoRA adapters (if any) folded into its weights: what Hugging Face can hold."""
    merge_lora(model)
    return model


def model_card(model: GPT, pipeline_tag: str, kind: str, base: str | None, run_id: str | None, run,
               notes: list[str]) -> str:
    """README.md of the folder: what the model is, what it was made from, its evaluation and the run."""
    config = model.config
    params = run.data.params if run else {}
    made_from = next(((params[b], params[d]) for b, d in MADE_FROM if b in params and d in params), (None, None))
    base = base or made_from[0]
    metrics = {name.removeprefix("evaluate/"): value for name, value in sorted(run.data.metrics.items())
               if name.startswith("evaluate/") and "second" not in name} if run else {}
    lines = ["---", "library_name: transformers", f"pipeline_tag: {pipeline_tag}", "tags: [gpt2, gptcore]", "---", "",
             "# A GPT-2 model made with gptcore", "",
             f"This is {kind}: GPT-2 with {model.num_parameters():,} parameters ({config.n_layers} layers, "
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
    call = ('[{"role": "user", "content": "Name three primary colors."}]' if "instruction" in kind
            else '"Free entry to win a prize, text WIN now"' if pipeline_tag == "text-classification"
            else '"Every effort moves you"')
    lines += ["## Use", "", "```python", "from transformers import pipeline", "",
              f'pipe = pipeline("{pipeline_tag}", model="path/to/this/folder")', f"print(pipe({call}))", "```", ""]
    for note in notes:
        lines += ["## Note", "", note, ""]
    return "\n".join(lines)
