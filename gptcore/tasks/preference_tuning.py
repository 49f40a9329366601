"""Preference tuning by direct preference optimization (DPO), the step after the book's chapter 7 (its bonus
notebook dpo-from-scratch.ipynb): entries of (instruction, input, chosen, rejected) formatted with the instruction
model's template; the policy (trained) and the reference (the same instruction model, frozen) score a response by
the mean log-probability of its tokens, and the loss is -logsigmoid(beta * ((policy_c - policy_r) - (ref_c -
ref_r))), the rewards policy - reference.

The reference never changes, so by default its log-probabilities are computed once per entry before training
(TRL's precompute_ref_log_probs) and ride in the batches; `preference.reference: per_step` computes them with the
frozen model in every step, as the notebook does. The policy's chosen and rejected responses go through one forward
(TRL's concatenated forward), and the output head computes only the positions that are scored.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.loaders import SplitTooShortError, make_dataloader, to_device
from ..errors import ConfigError
from ..settings.preference import PreferenceConfig
from ..training.task import Task
from .instruction_tuning import Template


@dataclass
class EncodedPreferences:
    """Each entry's prompt + marker + chosen and + rejected tokens, how many of their first tokens the
    log-probabilities leave out, and (once precomputed) the reference's log-probabilities of both."""
    chosen: list[list[int]]
    rejected: list[list[int]]
    masked: list[int]
    reference: torch.Tensor | None = None  # (entries, 2): chosen, rejected

    def __len__(self) -> int:
        return len(self.chosen)


def encode_preferences(entries: list[dict], template: Template, tokenizer, mask: str) -> EncodedPreferences:
    """The notebook's PreferenceDataset: the prompt, and prompt + marker + each response, encoded apart."""
    prompts = [template.format_prompt(entry["instruction"], entry["input"]) for entry in entries]
    chosen = tokenizer.encode_batch([p + template.response + e["chosen"] for p, e in zip(prompts, entries)])
    rejected = tokenizer.encode_batch([p + template.response + e["rejected"] for p, e in zip(prompts, entries)])
    if mask == "notebook":  # its mask[:prompt.shape[0] + 2] = False: the "\n\n###" of the Alpaca marker
        masked = [len(ids) + 2 for ids in tokenizer.encode_batch(prompts)]
    elif mask == "marker":
        masked = [len(ids) for ids in tokenizer.encode_batch([p + template.response for p in prompts])]
    else:
        masked = [0] * len(entries)
    return EncodedPreferences(chosen, rejected, masked)


def collate_preferences(encoded: EncodedPreferences, rows: list[int], *, pad_id: int, max_length: int | None):
    """The notebook's custom_collate_fn: both responses of every entry padded with pad_id to the longest + 1, a
    mask that is true on their tokens after the first `masked`, cut to max_length; then the reference's
    log-probabilities when precomputed. (chosen, rejected, chosen_mask, rejected_mask[, ref_chosen,
    ref_rejected])."""
    longest = max(max(len(encoded.chosen[row]), len(encoded.rejected[row])) for row in rows) + 1
    ids = torch.full((2, len(rows), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((2, len(rows), longest), dtype=torch.bool)
    for index, row in enumerate(rows):
        for side, tokens in enumerate((encoded.chosen[row], encoded.rejected[row])):
            ids[side, index, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[side, index, encoded.masked[row]:len(tokens)] = True
    ids, mask = ids[..., :max_length], mask[..., :max_length]
    batch = (ids[0].contiguous(), ids[1].contiguous(), mask[0].contiguous(), mask[1].contiguous())
    if encoded.reference is not None:
        batch += tuple(encoded.reference[rows].T.contiguous())
    return batch


def response_logprobs(model, chosen, rejected, chosen_mask, rejected_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """The notebook's compute_logprobs of both responses: per row, the mean log-probability of the tokens its mask
    keeps, each predicted from the ones before. One forward over both; the head computes the kept positions
    only (the logits of the others are never read), their log-softmax in fp32."""
    ids = torch.cat([chosen, rejected])
    kept = torch.cat([chosen_mask, rejected_mask])[:, 1:]
    rows, positions = kept.nonzero(as_tuple=True)
    hidden = model.hidden_states(ids)[:, :-1]  # position t predicts token t + 1
    logits = model.lm_head(hidden[rows, positions]).float()
    token_logprobs = logits.gather(-1, ids[:, 1:][rows, positions, None]).squeeze(-1) - logits.logsumexp(-1)
    sums = torch.zeros(ids.shape[0], dtype=torch.float32, device=ids.device).index_add_(0, rows, token_logprobs)
    return (sums / kept.sum(-1)).chunk(2)


def dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float):
    """The notebook's compute_dpo_loss (DPO's Eq. 7, TRL's sigmoid loss): the batch's mean loss and its mean
    chosen and rejected rewards (policy - reference, no gradient)."""
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    loss = -F.logsigmoid(beta * logits).mean()
    chosen_reward, rejected_reward = policy_chosen - reference_chosen, policy_rejected - reference_rejected
    return loss, chosen_reward.detach().mean(), rejected_reward.detach().mean()


class PreferenceModel(nn.Module):
    """forward(chosen, rejected, chosen_mask, rejected_mask[, ref_chosen, ref_rejected]) -> ((chosen reward,
    rejected reward), loss): the reference's log-probabilities from the batch, or from the frozen reference."""

    def __init__(self, policy, beta: float, reference=None):
        super().__init__()
        self.policy, self.beta, self.reference = policy, beta, reference

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:  # frozen in eval mode, as the notebook's, whatever the policy's mode
            self.reference.eval()
        return self

    def forward(self, chosen, rejected, chosen_mask, rejected_mask, ref_chosen=None, ref_rejected=None):
        policy_chosen, policy_rejected = response_logprobs(self.policy, chosen, rejected, chosen_mask, rejected_mask)
        if ref_chosen is None:
            with torch.no_grad():
                ref_chosen, ref_rejected = response_logprobs(self.reference, chosen, rejected, chosen_mask,
                                                             rejected_mask)
        loss, chosen_reward, rejected_reward = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                                                        self.beta)
        return (chosen_reward, rejected_reward), loss


def length_limit(config: PreferenceConfig, context_length: int) -> int:
    return min(config.allowed_max_length or context_length, context_length)


def check_scored(encoded: EncodedPreferences, limit: int, split: str) -> None:
    """Every response must keep a token to score within the limit (else its mean log-probability is 0 / 0)."""
    for row in range(len(encoded)):
        for side, tokens in (("chosen", encoded.chosen[row]), ("rejected", encoded.rejected[row])):
            if min(len(tokens), limit) - 1 < encoded.masked[row]:
                raise ConfigError(f"{split} entry {row + 1}: its {side} response has no token to score within "
                                  f"{limit} tokens (the prompt and the masked tokens take {encoded.masked[row]}); "
                                  "shorten its prompt, raise preference.allowed_max_length or use a longer context")


class PreferenceTuning(Task):
    """DPO as a task of the one training loop: batches collated as the notebook's custom_collate_fn, the DPO
    loss of the policy against the reference, and every eval_freq steps the notebook's evaluation: the loss and
    the chosen and rejected rewards (and their margin) on the first eval_iter batches of each split, in order."""

    def __init__(self, train: EncodedPreferences, val: EncodedPreferences, config: PreferenceConfig):
        self.splits, self.config = {"train": train, "validation": val}, config

    def bind(self, model, config, runtime, ranks, pin_memory: bool) -> None:
        if ranks.world_size > 1 or config.windows == "random":
            raise ConfigError("preference_train: DPO runs in one process on the entries in epochs; set "
                              "preference_train.nproc: 1 and windows: sliding")
        if len(self.splits["train"]) < config.batch_size * config.grad_accum_steps:
            raise SplitTooShortError(f"the training split has {len(self.splits['train'])} entries, fewer than one "
                                     f"step's {config.batch_size * config.grad_accum_steps} (preference_train."
                                     "batch_size x grad_accum_steps); lower them or add entries")
        self.limit = length_limit(self.config, model.config.context_length)
        for name, encoded in self.splits.items():
            check_scored(encoded, self.limit, name)
            cut = sum(max(len(c), len(r)) > self.limit for c, r in zip(encoded.chosen, encoded.rejected))
            if cut:
                print(f"warning: {name}: {cut} of {len(encoded)} entries are longer than {self.limit} tokens and were "
                      "cut to it", file=sys.stderr)
        # the model as it is now, before any step, is the reference
        started, reference = time.perf_counter(), None
        if self.config.reference == "precomputed":
            for encoded in self.splits.values():
                encoded.reference = entry_logprobs(model, encoded, self.config, self.limit, runtime, config.batch_size)
        else:
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        self.reference_seconds = time.perf_counter() - started
        self.module = PreferenceModel(model, self.config.beta, reference)
        self.train_loader = self.loader(self.splits["train"], config.batch_size, shuffle=config.shuffle,
                                        drop_last=config.drop_last, seed=config.seed, split="train",
                                        pin_memory=pin_memory)
        self.in_order = {name: self.loader(encoded, config.batch_size, shuffle=False, drop_last=False, seed=0,
                                           split=name, pin_memory=pin_memory)
                         for name, encoded in self.splits.items()}

    def loader(self, encoded: EncodedPreferences, batch_size: int, **options):
        def collate(rows):
            return collate_preferences(encoded, rows, pad_id=self.config.pad_id, max_length=self.limit)
        return make_dataloader(list(range(len(encoded))), batch_size=batch_size, collate_fn=collate, **options)

    def training_module(self, model):
        return self.module

    def evaluate(self, model, runtime, num_batches: int) -> dict:
        measured = {}
        for name, loader in self.in_order.items():
            prefix = "val" if name == "validation" else name
            loss, chosen, rejected = preference_loss(self.module, loader, num_batches=num_batches, runtime=runtime)
            measured |= {f"{prefix}_loss": loss, f"{prefix}_chosen_reward": chosen,
                         f"{prefix}_rejected_reward": rejected, f"{prefix}_reward_margin": chosen - rejected}
        return measured


@torch.no_grad()
def entry_logprobs(model, encoded: EncodedPreferences, config: PreferenceConfig, limit: int, runtime,
                   batch_size: int) -> torch.Tensor:
    """(entries, 2): the model's log-probabilities of each entry's chosen and rejected response, in eval mode."""
    was_training = model.training
    model.eval()
    values = []
    for start in range(0, len(encoded), batch_size):
        rows = list(range(start, min(start + batch_size, len(encoded))))
        batch = to_device(collate_preferences(encoded, rows, pad_id=config.pad_id, max_length=limit), runtime.device)
        with runtime.autocast():
            values.append(torch.stack(response_logprobs(model, *batch[:4]), dim=1).float().cpu())
    model.train(was_training)
    return torch.cat(values)


@torch.no_grad()
def preference_loss(module: PreferenceModel, batches, *, num_batches: int | None, runtime) -> tuple[float, ...]:
    """The notebook's compute_dpo_loss_loader: over the first num_batches batches (all when None), the means of
    the batches' loss, chosen reward and rejected reward."""
    was_training = module.training
    module.eval()
    totals, count = torch.zeros(3, dtype=torch.float64), 0
    for index, batch in enumerate(batches):
        if num_batches is not None and index >= num_batches:
            break
        with runtime.autocast():
            (chosen, rejected), loss = module(*to_device(batch, runtime.device))
        totals += torch.stack([loss.detach(), chosen, rejected]).double().cpu()
        count += 1
    module.train(was_training)
    return tuple((totals / count).tolist())


def reward_metrics(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> dict:
    """Per entry (rows of (chosen, rejected) log-probabilities, as entry_logprobs gives them), averaged: the DPO
    loss, the chosen and rejected rewards, their margin, and the reward accuracy (the share of entries whose
    chosen response has the higher reward)."""
    rewards = (policy - reference).double()
    margins = rewards[:, 0] - rewards[:, 1]
    return {"loss": float(-F.logsigmoid(beta * margins).mean()), "chosen_reward": float(rewards[:, 0].mean()),
            "rejected_reward": float(rewards[:, 1].mean()), "reward_margin": float(margins.mean()),
            "reward_accuracy": float((margins > 0).double().mean())}
