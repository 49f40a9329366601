"""params.yaml `generate`: the sampler (gptcore.model.sampling), also the `gptcore generate` options."""

from dataclasses import dataclass

from . import check_fields, setting

INFERENCE_WEIGHTS = ("auto", "fp32", "bf16", "int8")


@dataclass(frozen=True)
class GenerateConfig:
    prompts: list[str] = setting(["Every effort moves you", "I HAD always thought Jack Gisburn"],
                                 "one sample per prompt")
    max_new_tokens: int = setting(50, "tokens to add to each prompt", low=1)
    temperature: float = setting(0.7, "0 = greedy", low=0.0)
    top_k: int | None = setting(50, "sample among the k likeliest tokens; null = off", low=1)
    top_p: float | None = setting(0.95, "nucleus: the likeliest tokens holding this much probability; null = off",
                                  low=0.0, high=1.0, low_open=True)
    seed: int | None = setting(123, "prompt i samples with seed + i; null = unseeded", low=0)
    stop_at_eos: bool = setting(True, "stop a sample at <|endoftext|>")
    device: str = setting("auto", "as train.device")
    weights: str = setting("auto", "auto = int8 on CPU, bf16 on a GPU that has it, else fp32 | fp32 | bf16 | "
                                   "int8 (weight-only, CPU)",
                           choices=INFERENCE_WEIGHTS)

    def __post_init__(self):
        check_fields(self, "generate")
