"""EleutherAI's lm-evaluation-harness on a model gptcore exported (gptcore export-hf), offline: the reference the
zero-shot tasks (gptcore.evaluation.zero_shot) are checked against, in the tests and benchmarks/zero_shot_reference.py.

The harness's own task definitions (`lambada_openai`, `hellaswag`) run on local data: a task YAML that includes
the harness's and reads a JSONL file instead of the Hub's dataset. Its tokenizer is the exported folder's own
(GPT-2's BPE, written by the export). Needs `lm_eval` (pip install lm_eval).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

# gptcore task -> (the harness's task, its folder under lm_eval/tasks, the split it scores)
HARNESS_TASKS = {"lambada": ("lambada_openai", "lambada", "test"), "hellaswag": ("hellaswag", "hellaswag",
                                                                                "validation")}


def task_yaml(task: str, data_file: Path) -> str:
    """A task YAML including the harness's own definition of `task`, reading data_file."""
    import lm_eval

    name, folder, split = HARNESS_TASKS[task]
    included = Path(lm_eval.__file__).parent / "tasks" / folder / f"{name}.yaml"
    return json.dumps({"include": str(included), "task": f"{name}_local", "dataset_path": "json",
                       "dataset_name": None, "dataset_kwargs": {"data_files": {split: str(Path(data_file).resolve())}},
                       "training_split": None, "validation_split": split if split == "validation" else None,
                       "test_split": split if split == "test" else None}, indent=2)


def run_harness(hf_folder, task: str, data_file, *, limit: int | None = None, batch_size: int = 16,
                device: str = "cpu") -> dict:
    """The harness's metrics for `task` on data_file, each example's (log-likelihood, greedy) per request
    ("requests", in document order), the seconds of the whole run and of its scoring (HFLM's forward passes)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoTokenizer, GPT2LMHeadModel

    model = HFLM(pretrained=GPT2LMHeadModel.from_pretrained(hf_folder).eval(),
                 tokenizer=AutoTokenizer.from_pretrained(hf_folder),
                 batch_size=batch_size, device=device)
    scoring, spent = model._loglikelihood_tokens, []

    def timed_scoring(*args, **kwargs):  # the model's share of the run, apart from building the task
        started = time.perf_counter()
        scored = scoring(*args, **kwargs)
        spent.append(time.perf_counter() - started)
        return scored

    model._loglikelihood_tokens = timed_scoring
    name = f"{HARNESS_TASKS[task][0]}_local"
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / f"{name}.yaml").write_text(task_yaml(task, data_file))  # JSON is YAML
        started = time.perf_counter()
        output = simple_evaluate(model=model, tasks=[name], task_manager=TaskManager(include_path=folder),
                                 limit=limit, log_samples=True, num_fewshot=0, bootstrap_iters=0)
        seconds = time.perf_counter() - started
    metrics = {key.split(",")[0]: value for key, value in output["results"][name].items()
               if key.endswith(",none") and "stderr" not in key}
    samples = sorted(output["samples"][name], key=lambda sample: sample["doc_id"])
    requests = [tuple(response) for sample in samples for response in sample["filtered_resps"]]
    return {"metrics": metrics, "requests": requests, "seconds": seconds, "scoring_seconds": sum(spent)}
