"""Stage generate-samples: models/ + params `generate` -> samples/NN-<prompt>.md (people) and .json (programs)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import torch

from gptcore.atomic import atomic_write_text
from gptcore.checkpoint import load_model
from gptcore.runtime import cast_for_inference, pick_device
from gptcore.sampling import check_prompt, generate
from gptcore.stage import run_stage, stage_params, stage_tracker
from gptcore.tokenizer import Tokenizer

SAMPLER_KEYS = ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "weights")


def generate_samples(settings: dict, model_dir: Path) -> list[dict]:
    """One continuation per prompt; prompt i uses seed + i, so each sample is reproducible on its own."""
    device = pick_device(settings["device"])
    model = cast_for_inference(load_model(model_dir), settings["weights"]).to(device).eval()
    tokenizer = Tokenizer()
    encoded = [tokenizer.encode(prompt) for prompt in settings["prompts"]]
    for index, ids in enumerate(encoded):  # every prompt checked before the first is generated
        check_prompt(len(ids), model.config.context_length, f"params.yaml: generate.prompts[{index}]")
    samples = []
    for index, (prompt, ids) in enumerate(zip(settings["prompts"], encoded)):
        prompt_ids = torch.tensor([ids], device=device)
        out = generate(model, prompt_ids, settings["max_new_tokens"], settings["temperature"], settings["top_k"],
                       settings["top_p"], tokenizer.eot_id if settings["stop_at_eos"] else None,
                       seed=settings["seed"] + index)
        new_ids = out[0, prompt_ids.size(1):].tolist()
        samples.append({"prompt": prompt, "sampler": {k: settings[k] for k in SAMPLER_KEYS} | {"seed": settings["seed"] + index},
                        "completion": tokenizer.decode(new_ids), "text": tokenizer.decode(out[0].tolist()),
                        "new_tokens": len(new_ids)})
    return samples


def sample_name(index: int, prompt: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40] or "prompt"
    return f"{index:02d}-{slug}"


def to_markdown(sample: dict) -> str:
    sampler = ", ".join(f"{k}={v}" for k, v in sample["sampler"].items())
    return (f"## Prompt\n\n> {sample['prompt']}\n\n**Sampler:** {sampler}\n\n## Text\n\n{sample['text']}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", default="models", type=Path)
    parser.add_argument("--out", default="samples", type=Path)
    args = parser.parse_args()
    params = stage_params("generate", "tracking", path=args.params)
    tracker = stage_tracker(params, args.models, "generate", "generate")
    samples = generate_samples(params["generate"], args.models)
    shutil.rmtree(args.out, ignore_errors=True)  # prompts may have been removed: no stale files
    for index, sample in enumerate(samples):
        name = sample_name(index, sample["prompt"])
        atomic_write_text(args.out / f"{name}.md", to_markdown(sample))
        atomic_write_text(args.out / f"{name}.json", json.dumps(sample, indent=2) + "\n")
        if tracker:
            tracker.log_text(to_markdown(sample), f"samples/{name}.md")
        print(f"--- {sample['prompt']!r}\n{sample['text']}")
    if tracker:
        tracker.finish()


if __name__ == "__main__":
    run_stage(main)
