"""params.yaml `lora` and `classify_lora`: low-rank adapters (the book's appendix E) for language-model
fine-tuning (the train stage) and for the classifier (gptcore.model.lora)."""

from dataclasses import dataclass

from ..errors import ConfigError
from . import check_fields, setting

# every nn.Linear of GPT-2: the fused c_attn takes one adapter per projection, as the book's three layers
LORA_LAYERS = ("query", "key", "value", "attn_proj", "mlp_fc", "mlp_proj", "head")
SCALINGS = ("alpha", "alpha/rank")
SAVE_MODES = ("merged", "adapter")


@dataclass(frozen=True)
class LoraConfig:
    rank: int | None = setting(None, "adapter rank r (the book: 16); null = no LoRA, the layers train as "
                                     "they are", low=1)
    alpha: float = setting(16.0, "the adapters' scale ...", low=0.0, low_open=True)
    scaling: str = setting("alpha", "... alpha * x A B (the book's package) | alpha/rank (PEFT, litgpt and the "
                                    "book's notebook)", choices=SCALINGS)
    layers: list[str] = setting(list(LORA_LAYERS), "which linear layers get adapters: " + " | ".join(LORA_LAYERS))
    save: str = setting("merged", "merged: adapters folded into the weights, a plain model folder | adapter: "
                                  "only the trained tensors, beside a pointer to the base model",
                        choices=SAVE_MODES)

    def __post_init__(self):
        check_fields(self, "lora")
        unknown = [layer for layer in self.layers if layer not in LORA_LAYERS]
        if unknown:
            raise ConfigError(f"lora.layers: unknown layer(s) {unknown}; choose from {', '.join(LORA_LAYERS)}")
