"""params.yaml `zero_shot`: the field's zero-shot benchmarks (LAMBADA, HellaSwag) of the evaluate stage and of
training (gptcore.evaluation.zero_shot); off by default."""

from dataclasses import dataclass

from ..errors import ConfigError
from . import check_fields, check_source_checksum, setting

TASKS = ("lambada", "hellaswag")
# harness: lm-evaluation-harness's hellaswag prompt | ctx: the example's ctx as it is (build-nanogpt, llm.c)
HELLASWAG_CONTEXTS = ("harness", "ctx")
LAMBADA_URL = "https://openaipublic.blob.core.windows.net/gpt-2/data/lambada_test.jsonl"
LAMBADA_SHA256 = "4aa8d02cd17c719165fc8a7887fddd641f43fcafa4b1c806ca8abc31fabdb226"
HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
# the keys that measuring a task reads besides the measurement's own (tasks, limit, batch size)
TASK_KEYS = {"lambada": ("lambada_source", "lambada_sha256"),
             "hellaswag": ("hellaswag_source", "hellaswag_sha256", "hellaswag_context")}


def check_tasks(names, key: str) -> None:
    """Every name a task of TASKS; otherwise one line naming `key`, the value and the known ones."""
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise ConfigError(f"{key}: {', '.join(map(repr, unknown))} is not a zero-shot task; the known ones are "
                          f"{', '.join(TASKS)}")


@dataclass(frozen=True)
class ZeroShotConfig:
    tasks: list[str] | None = setting(None, "measured by the evaluate stage: lambada | hellaswag; null = none (the "
                                            "book's model, trained on 5,000 tokens, scores at chance)")
    limit: int | None = setting(None, "the first this many examples of each task; null = all", low=1)
    train_tasks: list[str] | None = setting(None, "measured during training too, every train_every steps (the "
                                                  "MLflow curves zero_shot/<task>_<metric>); null = none")
    train_every: int = setting(250, "steps between those measurements (build-nanogpt: HellaSwag every 250)", low=1)
    train_limit: int | None = setting(None, "examples of each task during training; null = all", low=1)
    batch_size: int = setting(16, "sequences per forward pass", low=1)
    lambada_source: str = setting(LAMBADA_URL, "OpenAI's LAMBADA test set (lm-evaluation-harness's lambada_openai): "
                                               "a .jsonl file of {\"text\": ...} or its URL")
    lambada_sha256: str | None = setting(LAMBADA_SHA256, "checksum of that file, verified; required for a URL",
                                         sha256=True)
    hellaswag_source: str = setting(HELLASWAG_URL, "HellaSwag's validation set (10,042 examples with ctx, ctx_a, "
                                                   "ctx_b, activity_label, endings, label): a .jsonl file or URL")
    hellaswag_sha256: str | None = setting(None, "checksum of that file, verified; required for a URL (sha256sum "
                                                 "of your download)", sha256=True)
    hellaswag_context: str = setting("harness", "harness: lm-evaluation-harness's prompt (activity label, WikiHow "
                                                "brackets removed) | ctx: the example's ctx (build-nanogpt)",
                                     choices=HELLASWAG_CONTEXTS)

    def __post_init__(self):
        check_fields(self, "zero_shot")
        for key in ("tasks", "train_tasks"):
            check_tasks(getattr(self, key) or [], f"zero_shot.{key}")
        for task in sorted(set(self.tasks or []) | set(self.train_tasks or [])):
            check_source_checksum(self, "zero_shot", f"{task}_source", f"{task}_sha256")

    def measured_settings(self, during_training: bool) -> dict:
        """The keys, with their values, that the measurements of zero_shot.train_tasks (during_training) or of
        zero_shot.tasks (the evaluate stage) read; {} when there are none. ZeroShotConfig(**them) measures the
        same. The stage plan-zero-shot writes them for the train and evaluate stages to depend on instead of
        the whole section, so a key no measurement reads (the source of a task not measured) reruns nothing."""
        tasks = self.train_tasks if during_training else self.tasks
        if not tasks:
            return {}
        keys = ("train_tasks", "train_every", "train_limit") if during_training else ("tasks", "limit")
        keys += ("batch_size",) + tuple(key for task in TASKS if task in tasks for key in TASK_KEYS[task])
        return {key: getattr(self, key) for key in keys}
