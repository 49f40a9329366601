"""The GPT-2 model in one module: transformer and KV cache (its config and presets: gptcore.settings.model).

Parameter names follow Hugging Face's GPT2LMHeadModel (transformer.wte, transformer.h.0.attn.c_attn, ...)
so weights map across by name; HF stores Conv1D weights transposed, which gptcore.formats.huggingface handles.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..settings.model import ModelConfig


class KVCache:
    """Pre-allocated keys/values for every layer: (n_layers, 2, B, n_heads, slots, head_dim), slots =
    context_length unless given.

    `length` counts the slots filled so far; a forward pass with the cache appends its tokens there. With
    `pad` (B,), row b's first pad[b] slots hold left padding: its tokens take positions from 0 after them,
    and no query attends to them (prompts of different lengths decoded in one batch).
    """

    def __init__(self, config: ModelConfig, batch_size: int, device, dtype, slots: int | None = None,
                 pad: torch.Tensor | None = None):
        head_dim = config.emb_dim // config.n_heads
        shape = (config.n_layers, 2, batch_size, config.n_heads, slots or config.context_length, head_dim)
        self.buffer = torch.empty(shape, device=device, dtype=dtype)
        self.length, self.pad = 0, pad

    def reset(self):
        self.length = 0

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop every other row (finished sequences stop costing compute)."""
        self.buffer = self.buffer[:, :, rows]
        self.pad = None if self.pad is None else self.pad[rows]

    def attention_mask(self, n_new: int) -> torch.Tensor | None:
        """(B, 1, n_new, length + n_new): causal, padding slots hidden; None without padding. A padding
        slot's own query sees itself, so no row of the softmax is empty (its output is never read)."""
        if self.pad is None:
            return None
        keys = torch.arange(self.length + n_new, device=self.pad.device)
        queries = keys[self.length:, None]
        visible = (keys[None, :] <= queries) & (keys[None, None, :] >= self.pad[:, None, None])
        return (visible | (keys[None, :] == queries))[:, None]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.drop_rate = config.drop_rate
        self.c_attn = nn.Linear(config.emb_dim, 3 * config.emb_dim, bias=config.qkv_bias)  # fused Q, K, V
        self.c_proj = nn.Linear(config.emb_dim, config.emb_dim)
        self.resid_dropout = nn.Dropout(config.drop_rate)

    def forward(self, x, layer_cache=None, start=0, attn_mask=None):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_heads, T, head_dim)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        mask, causal = attn_mask, attn_mask is None
        if layer_cache is not None:
            layer_cache[0, :, :, start:start + T] = k
            layer_cache[1, :, :, start:start + T] = v
            k, v = layer_cache[0, :, :, :start + T], layer_cache[1, :, :, :start + T]
            if start > 0 and attn_mask is None:  # queries at start..start+T-1 see keys up to their own position
                causal = False
                if T > 1:
                    mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and mask is None,
            dropout_p=self.drop_rate if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.emb_dim, 4 * config.emb_dim)
        self.c_proj = nn.Linear(4 * config.emb_dim, config.emb_dim)
        self.dropout = nn.Dropout(config.drop_rate)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); dropout sits inside attn and mlp."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.emb_dim, eps=1e-5)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.emb_dim, eps=1e-5)
        self.mlp = MLP(config)

    def forward(self, x, layer_cache=None, start=0, attn_mask=None):
        x = x + self.attn(self.ln_1(x), layer_cache, start, attn_mask)
        return x + self.mlp(self.ln_2(x))


def vocab_padded_linear(x: torch.Tensor, weight: torch.Tensor, multiple: int = 64) -> torch.Tensor:
    """x @ weight.T, multiplied with weight's rows zero-padded to a multiple of `multiple` and the padding's
    columns dropped (a view): the same logits and gradients, through an aligned matmul."""
    padding = -weight.shape[0] % multiple
    if padding == 0:
        return F.linear(x, weight)
    return F.linear(x, F.pad(weight, (0, 0, 0, padding)))[..., :weight.shape[0]]


def sinusoidal_table(context_length: int, emb_dim: int) -> torch.Tensor:
    """(context_length, emb_dim) table of Vaswani et al.: sin on even, cos on odd dimensions."""
    position = torch.arange(context_length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, emb_dim, 2, dtype=torch.float32) * (-math.log(10000.0) / emb_dim))
    table = torch.zeros(context_length, emb_dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: emb_dim // 2])
    return table


def torch_default_linear_(weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    """nn.Linear's reset_parameters on any (out, in) weight, a row block of a fused one included:
    Kaiming-uniform weight and a uniform bias, both within 1/sqrt(in_features)."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        bound = 1 / math.sqrt(weight.shape[1])
        nn.init.uniform_(bias, -bound, bound)


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        rng_before = torch.get_rng_state()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.emb_dim),
            drop=nn.Dropout(config.drop_rate),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layers)),
            ln_f=nn.LayerNorm(config.emb_dim, eps=1e-5),
        ))
        if config.pos_embedding == "learned":
            self.transformer.wpe = nn.Embedding(config.context_length, config.emb_dim)
        else:  # fixed, so a buffer rather than a parameter
            self.register_buffer("sinusoidal_pos", sinusoidal_table(config.context_length, config.emb_dim),
                                 persistent=False)
        self.lm_head = nn.Linear(config.emb_dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        if config.init == "torch_default":
            torch.set_rng_state(rng_before)  # construction drew in gptcore's order; draw again in the book's
            self._init_like_the_book()
        else:
            self.apply(self._init_weights)
            # GPT-2 scales the residual projections by 1/sqrt(2 * n_layers) (two per block)
            for name, param in self.named_parameters():
                if name.endswith("c_proj.weight"):
                    nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))

    @torch.no_grad()
    def _init_like_the_book(self):
        """PyTorch's default initialisation, drawn in the order in which the book's GPTModel builds its
        modules: tok_emb, pos_emb, then per block W_query, W_key, W_value, out_proj, ff.layers.0,
        ff.layers.2 (its LayerNorms draw nothing), then out_head. Each draw fills its tensor element by
        element from the global generator, so the query, key and value row blocks of the fused c_attn,
        drawn one after the other (each weight, then its bias), take exactly the numbers of the book's
        three separate layers; after the same torch.manual_seed the two models hold equal weights."""
        emb = self.config.emb_dim
        nn.init.normal_(self.transformer.wte.weight)  # nn.Embedding: N(0, 1)
        if self.config.pos_embedding == "learned":
            nn.init.normal_(self.transformer.wpe.weight)
        for block in self.transformer.h:
            attn, mlp = block.attn, block.mlp
            for rows in (slice(0, emb), slice(emb, 2 * emb), slice(2 * emb, 3 * emb)):  # query, key, value
                torch_default_linear_(attn.c_attn.weight[rows],
                                      attn.c_attn.bias[rows] if attn.c_attn.bias is not None else None)
            for linear in (attn.c_proj, mlp.c_fc, mlp.c_proj):
                torch_default_linear_(linear.weight, linear.bias)
            for norm in (block.ln_1, block.ln_2):
                nn.init.ones_(norm.weight)
                nn.init.zeros_(norm.bias)
        if not self.config.tie_embeddings:
            torch_default_linear_(self.lm_head.weight)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def crop_context(self, context_length: int) -> None:
        """Keep the first context_length positions (nanoGPT's crop_block_size), e.g. to fine-tune
        OpenAI's 1024-position weights on 256-token windows; outputs at those positions are unchanged."""
        if context_length > self.config.context_length:
            raise ValueError(f"cannot crop to context_length {context_length}: the model has "
                             f"{self.config.context_length} positions")
        self.config = replace(self.config, context_length=context_length)
        if self.config.pos_embedding == "learned":
            self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:context_length].detach().clone())
            self.transformer.wpe.num_embeddings = context_length
        else:
            self.sinusoidal_pos = self.sinusoidal_pos[:context_length]

    def untie_embeddings(self) -> None:
        """Give the output head its own copy of the token embedding (the book's GPTModel keeps a separate
        out_head, which load_weights_into_gpt fills with OpenAI's embedding), so it can train apart."""
        if self.config.tie_embeddings:
            self.lm_head.weight = nn.Parameter(self.transformer.wte.weight.detach().clone())
            self.config = replace(self.config, tie_embeddings=False)

    def num_parameters(self) -> int:
        """Distinct parameters: a tied output head is counted once, as OpenAI's 124M does."""
        return sum(p.numel() for p in self.parameters())

    def embed(self, idx, start: int = 0, pad: torch.Tensor | None = None):
        """idx (B, T) token ids at positions start.. (row b: start - pad[b].., its left padding at 0) -> the
        residual stream entering block 0 (B, T, emb_dim)."""
        T = idx.shape[1]
        # the unpadded check needs no value from the device (no host sync in a training step)
        length = start + T if pad is None else start + T - int(pad.min())
        if length > self.config.context_length:
            raise ValueError(f"sequence of {length} tokens exceeds context_length {self.config.context_length}; "
                             "crop the input first")
        positions = torch.arange(start, start + T, device=idx.device)
        if pad is not None:
            positions = (positions[None] - pad[:, None]).clamp(min=0)  # (B, T)
        pos_emb = self.transformer.wpe(positions) if self.config.pos_embedding == "learned" \
            else self.sinusoidal_pos[positions]
        return self.transformer.drop(self.transformer.wte(idx) + pos_emb)

    def hidden_states(self, idx, kv_cache: KVCache | None = None):
        """idx (B, T) token ids -> the final LayerNorm's output (B, T, emb_dim), what the output head reads.

        With kv_cache, idx holds only the new tokens: they take positions kv_cache.length onwards.
        """
        start = kv_cache.length if kv_cache is not None else 0
        x = self.embed(idx, start, kv_cache.pad if kv_cache is not None else None)
        mask = kv_cache.attention_mask(idx.shape[1]) if kv_cache is not None else None
        for i, block in enumerate(self.transformer.h):
            x = block(x, kv_cache.buffer[i] if kv_cache is not None else None, start, mask)
        if kv_cache is not None:
            kv_cache.length += idx.shape[1]
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, kv_cache: KVCache | None = None, last_token_only=False):
        """idx (B, T) token ids -> logits (B, T, vocab) or (B, 1, vocab); loss when targets (B, T) given
        (kv_cache: as hidden_states)."""
        x = self.hidden_states(idx, kv_cache)
        if last_token_only:
            x = x[:, -1:, :]
        # cuBLAS takes its tensor-core kernels only when a row of the output is 16-byte aligned; GPT-2's
        # 50,257 columns are not, so on CUDA training and evaluation run the head padded (docs/benchmarks.md,
        # H100). A decoding step's one position per sequence would pay the weight's copy for nothing.
        # Elsewhere it computes as it always has, bit for bit.
        padded = x.device.type == "cuda" and not last_token_only
        logits = vocab_padded_linear(x, self.lm_head.weight) if padded else self.lm_head(x)
        if targets is None:
            return logits, None
        # the log-softmax in fp32 whatever the logits' dtype: the numbers of casting the logits first, and
        # 3.9 % faster than that in an eager bf16 step on an H100
        loss = F.nll_loss(F.log_softmax(logits.flatten(0, 1), dim=-1, dtype=torch.float32), targets.flatten())
        return logits, loss
