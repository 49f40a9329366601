"""Text generation: greedy, random, temperature, top-k and top-p sampling with a KV cache.

The model sees at most context_length tokens. When a sequence fills the window, the oldest half is
dropped and the newest half becomes the window again. Learned absolute positions mean a cached key is
only valid at the position it was computed for, so sliding one token at a time would recompute the
whole window every step; dropping half at once costs one prefill of context_length/2 tokens every
context_length/2 new tokens, so each token still costs about one position. Without the cache the same
window is recomputed in full each step, which is why both paths give identical tokens.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..settings import check_value
from ..settings.generate import GenerateConfig
from ..settings.model import VOCAB_SIZE
from .gpt import GPT, KVCache


def validate_sampler(**settings) -> None:
    """Raise ConfigError naming the bad setting, by the rules of params.yaml's generate section."""
    for name, value in settings.items():
        check_value(GenerateConfig.__dataclass_fields__[name], "generate", value)


def check_prompt(n_tokens: int, context_length: int, name: str = "the prompt") -> None:
    """User-facing prompts must fit the context (generate() itself keeps the last context_length tokens,
    as nanoGPT does, which would silently drop the start of a user's prompt)."""
    if n_tokens == 0:
        raise ConfigError(f"{name} is empty; give some text to continue")
    if n_tokens > context_length:
        raise ConfigError(f"{name} is {n_tokens} tokens, longer than the model's context of {context_length} "
                          f"tokens; shorten it")


def filter_logits(logits, top_k=None, top_p=None):
    """Set logits outside the top-k and outside the top-p nucleus to -inf. logits: (B, vocab)."""
    if top_k is not None and top_k < logits.size(-1):
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # keep a token while the mass before it is < p: the smallest set whose mass reaches p
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
    """logits (B, vocab) -> token ids (B, 1)."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(model: GPT, token_ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, eos_id: int | None = None, seed: int | None = None,
             generator: torch.Generator | None = None, use_cache: bool = True, on_token=None):
    """Extend token_ids (B, T) by up to max_new_tokens; returns (B, T + n) with n <= max_new_tokens.

    temperature 0 is greedy. A sequence that produced eos_id is finished and padded with eos_id; the
    loop stops when all are. on_token(tokens (B, 1)) is called after each step (for streaming).
    """
    validate_sampler(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens)
    if token_ids.dim() != 2 or token_ids.size(1) == 0:
        raise ConfigError("token_ids must be a non-empty (batch, tokens) tensor; an empty prompt has nothing "
                         "to continue (use the end-of-text token to start from nothing)")
    if generator is None and seed is not None:
        generator = torch.Generator(device=token_ids.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    context = model.config.context_length
    keep = max(1, context // 2)  # tokens kept when the window slides
    window_start = max(0, token_ids.size(1) - context)
    cache = None
    if use_cache:
        dtype = next(model.parameters()).dtype
        cache = KVCache(model.config, token_ids.size(0), token_ids.device, dtype)
    finished = torch.zeros(token_ids.size(0), 1, dtype=torch.bool, device=token_ids.device)
    sequence = token_ids
    for _ in range(max_new_tokens):
        if sequence.size(1) - window_start > context:  # window full: slide by dropping the oldest half
            window_start = sequence.size(1) - keep
            if cache is not None:
                cache.reset()
        if cache is None:
            logits, _ = model(sequence[:, window_start:], last_token_only=True)
        else:
            logits, _ = model(sequence[:, window_start + cache.length:], kv_cache=cache, last_token_only=True)
        # a vocabulary padded past GPT-2's (nanoGPT's 50,304) has rows no text decodes to
        token = next_token(logits[:, -1, :VOCAB_SIZE], temperature, top_k, top_p, generator)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        sequence = torch.cat([sequence, token], dim=1)
        if on_token is not None:
            on_token(token)
        if eos_id is not None and bool(finished.all()):
            break
    model.train(was_training)
    return sequence


def continue_prompts(model: GPT, tokenizer, prompts: list[str], settings: GenerateConfig, device=None,
                     name: str = "generate.prompts") -> list[dict]:
    """prompts continued with settings' sampler, prompt i with seed + i so that each sample is
    reproducible on its own; every prompt is checked against the context (named `name[i]`) before the
    first is generated. Per prompt: its token ids, the new ids and the seed it used."""
    encoded = [tokenizer.encode(prompt) for prompt in prompts]
    for index, ids in enumerate(encoded):
        check_prompt(len(ids), model.config.context_length, f"{name}[{index}]")
    continued = []
    for index, ids in enumerate(encoded):
        seed = None if settings.seed is None else settings.seed + index
        out = generate(model, torch.tensor([ids], device=device), settings.max_new_tokens,
                       temperature=settings.temperature, top_k=settings.top_k, top_p=settings.top_p,
                       eos_id=tokenizer.eot_id if settings.stop_at_eos else None, seed=seed)
        continued.append({"prompt_ids": ids, "new_ids": out[0, len(ids):].tolist(), "seed": seed})
    return continued


def new_token_budget(prompt_length: int, context_length: int, max_new_tokens: int) -> int:
    """Tokens a prompt can get without sliding the window: its positions, then one for each token fed
    back, at most the context (the last new token is read from the context's last position)."""
    return min(max_new_tokens, context_length - prompt_length + 1)


@torch.no_grad()
def generate_batched(model: GPT, prompts: list[list[int]], max_new_tokens: int, *, eos_id: int | None,
                     batch_size: int = 16, temperature: float = 0.0, top_k: int | None = None,
                     top_p: float | None = None, seed: int | None = None) -> list[list[int]]:
    """The new tokens of each prompt (its end-of-text not included), batch_size prompts at a time with a
    KV cache. The prompts are taken longest first, so a batch pads little, and left-padded within it; a
    sequence stops at eos_id, after max_new_tokens, or when it has filled the model's context (the last
    token generate() would give before it slides the window), and leaves the batch then.

    At batch 1 the tokens are generate()'s. In a batch, fp32 rounding depends on the batch's shape, so a
    near-tie between the two likeliest tokens can go the other way.
    """
    validate_sampler(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens)
    context = model.config.context_length
    for index, prompt in enumerate(prompts):
        check_prompt(len(prompt), context, f"prompt {index}")
    device = next(model.parameters()).device
    generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[int]] = [[] for _ in prompts]
    for first in range(0, len(order), batch_size):
        rows = order[first:first + batch_size]
        lengths = [len(prompts[row]) for row in rows]
        budgets = [new_token_budget(length, context, max_new_tokens) for length in lengths]
        longest = max(lengths)
        ids = torch.zeros(len(rows), longest, dtype=torch.long)
        for slot, row in enumerate(rows):
            ids[slot, longest - lengths[slot]:] = torch.tensor(prompts[row])
        pad = torch.tensor([longest - length for length in lengths], device=device)
        cache = KVCache(model.config, len(rows), device, next(model.parameters()).dtype,
                        slots=longest + max(budgets) - 1, pad=pad if bool(pad.any()) else None)
        logits, _ = model(ids.to(device), kv_cache=cache, last_token_only=True)
        alive = list(range(len(rows)))  # the batch's slots still decoding, in cache order
        while alive:
            tokens = next_token(logits[:, -1, :VOCAB_SIZE], temperature, top_k, top_p, generator)
            keep = []
            for position, (slot, token) in enumerate(zip(alive, tokens[:, 0].tolist())):
                if token == eos_id:
                    continue
                results[rows[slot]].append(token)
                if len(results[rows[slot]]) < budgets[slot]:
                    keep.append(position)
            if not keep:
                break
            if len(keep) < len(alive):  # finished sequences leave the batch
                kept = torch.tensor(keep, device=device)
                cache.keep_rows(kept)
                tokens, alive = tokens[kept], [alive[position] for position in keep]
            logits, _ = model(tokens, kv_cache=cache, last_token_only=True)
    model.train(was_training)
    return results
