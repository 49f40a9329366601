"""params.yaml `model`: the architecture (ModelConfig, with GPT-2's presets) and where weights start.

The section holds ModelSource's fields, then any ModelConfig field as an override of the preset (null
keeps the preset's value).
"""

from dataclasses import asdict, dataclass, fields, replace

from ..errors import ConfigError
from . import check_fields, setting

VOCAB_SIZE = 50257  # GPT-2's BPE: 256 bytes + 50,000 merges + <|endoftext|>
EOT_ID = VOCAB_SIZE - 1  # <|endoftext|>, the last id
POS_EMBEDDINGS = ("learned", "sinusoidal")
# torch_default: PyTorch's own initialisation in the book's construction order (its GPTModel after
# torch.manual_seed gives the same weights); gpt2: N(0, 0.02) with scaled residual projections (GPT-2, nanoGPT)
INITS = ("torch_default", "gpt2")


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = setting(VOCAB_SIZE, "token ids the embedding holds", low=1)
    context_length: int = setting(1024, "positions the model sees (the book shortens GPT-2's 1024 to 256)", low=1)
    emb_dim: int = setting(768, "width of the residual stream", low=1)
    n_heads: int = setting(12, "attention heads; must divide emb_dim", low=1)
    n_layers: int = setting(12, "transformer blocks", low=1)
    drop_rate: float = setting(0.1, "dropout on embeddings, attention and MLP outputs", low=0.0, high=1.0,
                               high_open=True)
    qkv_bias: bool = setting(False, "biases on the query, key and value projections (OpenAI's weights need true)")
    tie_embeddings: bool = setting(True, "the output head shares the token embedding (GPT-2) | false: the "
                                         "book's separate out_head")
    pos_embedding: str = setting("learned", "learned positions (GPT-2) | sinusoidal (fixed table)",
                                 choices=POS_EMBEDDINGS)
    init: str = setting("gpt2", "gpt2: N(0, 0.02), scaled residual projections | torch_default: PyTorch's own "
                                "init, weight for weight the book's GPTModel after torch.manual_seed(train.seed)",
                        choices=INITS)

    def __post_init__(self):
        check_fields(self, "model")
        if self.emb_dim % self.n_heads:
            raise ConfigError(f"model.emb_dim ({self.emb_dim}) must be divisible by model.n_heads ({self.n_heads})")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ModelConfig":
        if name not in PRESETS:
            raise ConfigError(f"model.preset = {name!r} is invalid; it must be one of {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"model config: unknown field(s) {unknown}; known fields are {sorted(known)}")
        return replace(PRESETS[name], **overrides)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS = {
    "gpt2-small": ModelConfig(n_layers=12, n_heads=12, emb_dim=768),  # 124M
    "gpt2-medium": ModelConfig(n_layers=24, n_heads=16, emb_dim=1024),  # 355M
    "gpt2-large": ModelConfig(n_layers=36, n_heads=20, emb_dim=1280),  # 774M
    "gpt2-xl": ModelConfig(n_layers=48, n_heads=25, emb_dim=1600),  # 1558M
    "tiny": ModelConfig(n_layers=2, n_heads=2, emb_dim=64, context_length=64),  # for tests
}


@dataclass(frozen=True)
class ModelSource:
    preset: str = setting("gpt2-small", "gpt2-small (124M) | gpt2-medium | gpt2-large | gpt2-xl | tiny",
                          choices=tuple(PRESETS))
    init_from: str = setting("scratch", "scratch | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a model folder | "
                                        "a book model.pth")

    def __post_init__(self):
        check_fields(self, "model")
