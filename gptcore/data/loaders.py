"""Training examples over memory-mapped token files: sliding windows or random windows.

Sliding windows (the book's GPTDataset) give exact epochs and suit small corpora; random windows
(nanoGPT's get_batch) sample anywhere in a corpus of any size and suit large ones.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import GptcoreError


def to_device(batch, device: torch.device) -> list[torch.Tensor]:
    """A batch's tensors on the device (copies from pinned memory overlap the work)."""
    return [tensor.to(device, non_blocking=True) for tensor in batch]


class SplitTooShortError(GptcoreError, ValueError):
    pass


def check_split_length(split: str, n_tokens: int, context_length: int) -> None:
    """One training window needs context_length + 1 tokens (inputs plus the shifted target)."""
    if n_tokens < context_length + 1:
        raise SplitTooShortError(
            f"the {split} split has {n_tokens} tokens, fewer than one window of context_length + 1 = "
            f"{context_length + 1}; use a longer corpus, a larger share for this split (data.train_ratio) "
            f"or a shorter model.context_length")


class GPTDataset(Dataset):
    """Window i: inputs tokens[s : s + max_length], targets one token later, with s = i * stride."""

    def __init__(self, tokens: np.ndarray, max_length: int, stride: int, split: str = "train"):
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        check_split_length(split, len(tokens), max_length)
        self.tokens, self.max_length, self.stride = tokens, max_length, stride
        # the book's range(0, len(tokens) - max_length, stride)
        self.n_windows = (len(tokens) - max_length - 1) // stride + 1

    def __len__(self):
        return self.n_windows

    def __getitem__(self, index):
        start = index * self.stride
        window = torch.from_numpy(self.tokens[start:start + self.max_length + 1].astype(np.int64))
        return window[:-1], window[1:]


class EpochSampler(Sampler):
    """Indices in a seeded order that depends only on (seed, epoch), starting after `skip` batches.

    That makes the data order a pure function of the position, so a resumed run continues exactly.
    With several processes the order is cut into global batches of batch_size * world_size windows and
    rank r takes slice r of each, so no two ranks see the same window in a step and the global batch
    is the one a single process with batch_size * world_size would see; an incomplete last global
    batch is dropped.
    """

    def __init__(self, length: int, shuffle: bool, seed: int, batch_size: int = 1, rank: int = 0,
                 world_size: int = 1):
        self.length, self.shuffle, self.seed = length, shuffle, seed
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.epoch, self.skip_batches = 0, 0

    def set_position(self, epoch: int, skip_batches: int = 0):
        self.epoch, self.skip_batches = epoch, skip_batches

    def order(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.length, generator=generator).tolist()

    def _indices(self) -> list[int]:
        order = self.order()
        if self.world_size == 1:
            return order[self.skip_batches * self.batch_size:]
        global_batch = self.batch_size * self.world_size
        first = self.rank * self.batch_size
        return [index for start in range(self.skip_batches * global_batch, self.length - global_batch + 1,
                                          global_batch)
                for index in order[start + first:start + first + self.batch_size]]

    def __iter__(self):
        return iter(self._indices())

    def __len__(self):  # without building the permutation
        if self.world_size == 1:
            return max(0, self.length - self.skip_batches * self.batch_size)
        return max(0, self.length // (self.batch_size * self.world_size) - self.skip_batches) * self.batch_size


class LengthGroupedSampler(EpochSampler):
    """EpochSampler's order regrouped so that a batch holds items of similar length (Hugging Face's
    group_by_length): the order cut into windows of `window_batches` global batches, each sorted longest
    first, and the full batches then shuffled; an incomplete last batch stays last (drop_last drops it).
    Still a pure function of (seed, epoch), so resume stays exact."""

    def __init__(self, lengths: list[int], shuffle: bool, seed: int, batch_size: int = 1, rank: int = 0,
                 world_size: int = 1, window_batches: int = 50):
        super().__init__(len(lengths), shuffle, seed, batch_size, rank, world_size)
        self.lengths, self.window_batches = lengths, window_batches

    def order(self) -> list[int]:
        order, global_batch = super().order(), self.batch_size * self.world_size
        window = self.window_batches * global_batch
        grouped = [index for start in range(0, len(order), window)
                   for index in sorted(order[start:start + window], key=lambda i: -self.lengths[i])]
        full = len(grouped) // global_batch
        batches = [grouped[b * global_batch:(b + 1) * global_batch] for b in range(full)]
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch + 500_000)
            batches = [batches[b] for b in torch.randperm(full, generator=generator).tolist()]
        return [index for batch in batches for index in batch] + grouped[full * global_batch:]


def make_dataloader(dataset: Dataset, *, batch_size: int, shuffle: bool, drop_last: bool, seed: int,
                    split: str = "train", rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                    collate_fn=None, lengths: list[int] | None = None) -> DataLoader:
    """A DataLoader with a seeded, resumable order, rank r's shard of it (see EpochSampler), its batches
    grouped by the items' lengths when given (LengthGroupedSampler); pin_memory for a CUDA device, so the
    copy to it can overlap the step (non_blocking); collate_fn makes a batch of items (PyTorch's default
    stacks them)."""
    global_batch = batch_size * world_size
    n_batches = len(dataset) // global_batch if drop_last or world_size > 1 else -(-len(dataset) // batch_size)
    if n_batches == 0:
        raise SplitTooShortError(
            f"the {split} split gives {len(dataset)} windows, fewer than one batch of {global_batch} "
            f"(batch_size {batch_size} x {world_size} processes) with drop_last; lower the batch size or "
            f"set drop_last false")
    # its own generator: creating an iterator must not draw from the global RNG (dropout's), or a resumed
    # run would diverge from a straight one
    sampler = EpochSampler(len(dataset), shuffle, seed, batch_size, rank, world_size) if lengths is None \
        else LengthGroupedSampler(lengths, shuffle, seed, batch_size, rank, world_size)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed), pin_memory=pin_memory, collate_fn=collate_fn)


def gather_windows(tokens, starts: np.ndarray, length: int) -> np.ndarray:
    """Rows tokens[s:s + length] for each start, gathered at once: from a file's tokens through a strided view of
    all its windows, from shards by ShardedTokens.windows (one gather per shard)."""
    if isinstance(tokens, np.ndarray):
        return sliding_window_view(tokens, length)[starts]
    return tokens.windows(starts, length)


class RandomWindows:
    """nanoGPT's get_batch: batch_size windows at uniformly random offsets, from a seeded generator.

    With several processes each step draws batch_size * world_size offsets and rank r takes slice r.
    pin_memory returns page-locked tensors, for copies to a CUDA device that overlap the step.
    """

    def __init__(self, tokens: np.ndarray, context_length: int, *, batch_size: int, seed: int, split="train",
                 rank: int = 0, world_size: int = 1, pin_memory: bool = False):
        check_split_length(split, len(tokens), context_length)
        self.tokens, self.context_length, self.batch_size = tokens, context_length, batch_size
        self.seed, self.rank, self.world_size, self.pin_memory = seed, rank, world_size, pin_memory

    def batch(self, step: int):
        """The batch for a given step: a pure function of (seed, step), so resume needs no state."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(len(self.tokens) - self.context_length, (self.batch_size * self.world_size,),
                               generator=generator)
        starts = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        windows = gather_windows(self.tokens, starts.numpy(), self.context_length + 1)
        windows = torch.from_numpy(windows.astype(np.int64))
        inputs, targets = windows[:, :-1], windows[:, 1:]
        if self.pin_memory:  # contiguous: a strided view would reach the GPU through an unpinned copy
            inputs, targets = inputs.contiguous().pin_memory(), targets.contiguous().pin_memory()
        return inputs, targets
