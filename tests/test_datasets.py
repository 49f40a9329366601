import numpy as np
import pytest
import torch

from gptcore.data.loaders import GPTDataset, RandomWindows, SplitTooShortError, make_dataloader


def seed_windows(token_ids, max_length, stride):
    """The seed's GPTDataset loop, verbatim in spirit."""
    inputs, targets = [], []
    for i in range(0, len(token_ids) - max_length, stride):
        inputs.append(token_ids[i:i + max_length])
        targets.append(token_ids[i + 1:i + max_length + 1])
    return inputs, targets


@pytest.mark.parametrize("n,max_length,stride", [(100, 10, 10), (101, 10, 10), (57, 8, 3), (11, 10, 1)])
def test_sliding_windows_match_the_seed(n, max_length, stride):
    tokens = np.arange(n, dtype=np.uint16)
    dataset = GPTDataset(tokens, max_length, stride)
    inputs, targets = seed_windows(tokens.tolist(), max_length, stride)
    assert len(dataset) == len(inputs)
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert x.tolist() == inputs[i] and y.tolist() == targets[i]


def test_verdict_loaders_have_the_books_batch_counts():
    train = GPTDataset(np.zeros(4612, dtype=np.uint16), 256, 256)
    val = GPTDataset(np.zeros(534, dtype=np.uint16), 256, 256, "validation")
    assert len(make_dataloader(train, batch_size=2, shuffle=True, drop_last=True, seed=123)) == 9
    assert len(make_dataloader(val, batch_size=2, shuffle=False, drop_last=False, seed=123, split="validation")) == 1


def test_too_short_split_names_split_count_and_context():
    with pytest.raises(SplitTooShortError, match=r"validation split has 200 tokens.*257"):
        GPTDataset(np.zeros(200, dtype=np.uint16), 256, 256, "validation")
    with pytest.raises(SplitTooShortError, match="fewer than one batch"):
        make_dataloader(GPTDataset(np.zeros(300, dtype=np.uint16), 256, 256), batch_size=2, shuffle=True,
                        drop_last=True, seed=0)


def test_loader_order_is_seeded_per_epoch_and_resumable():
    dataset = GPTDataset(np.arange(1000, dtype=np.uint16), 10, 10)
    def first_tokens(seed):
        return [x[:, 0].tolist() for x, _ in make_dataloader(dataset, batch_size=4, shuffle=True, drop_last=True,
                                                              seed=seed)]

    loader = make_dataloader(dataset, batch_size=4, shuffle=True, drop_last=True, seed=5)
    first = [x[:, 0].tolist() for x, _ in loader]
    assert first == first_tokens(5) and first != first_tokens(6)
    loader.sampler.set_position(epoch=1)
    second_epoch = [x[:, 0].tolist() for x, _ in loader]
    assert second_epoch != first
    loader.sampler.set_position(epoch=1, skip_batches=3)
    assert [x[:, 0].tolist() for x, _ in loader] == second_epoch[3:]


def test_dataloader_does_not_touch_the_global_rng():
    loader = make_dataloader(GPTDataset(np.arange(100, dtype=np.uint16), 10, 10), batch_size=2, shuffle=True,
                             drop_last=True, seed=0)
    state = torch.get_rng_state()
    iter(loader)
    assert torch.equal(torch.get_rng_state(), state)


def test_random_windows_are_a_function_of_the_step():
    windows = RandomWindows(np.arange(5000, dtype=np.uint16), 16, batch_size=4, seed=1)
    x, y = windows.batch(7)
    assert x.shape == (4, 16) and torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    assert torch.equal(windows.batch(7)[0], x) and not torch.equal(windows.batch(8)[0], x)


def test_pinned_random_windows_are_contiguous(monkeypatch):
    # torch copies a strided CPU tensor to the GPU through an unpinned contiguous copy: pinning the view
    # would be wasted (pinning itself needs CUDA, so it is recorded here, not done)
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda tensor: pinned.append(tensor.is_contiguous()) or tensor)
    x, y = RandomWindows(np.arange(5000, dtype=np.uint16), 16, batch_size=4, seed=1, pin_memory=True).batch(7)
    assert pinned == [True, True]
    assert torch.equal(x, RandomWindows(np.arange(5000, dtype=np.uint16), 16, batch_size=4, seed=1).batch(7)[0])


@pytest.mark.parametrize("skip_batches", [0, 2])
def test_ranks_split_each_global_batch_of_one_process(skip_batches):
    """2 ranks x batch 3 see, step by step, the windows of 1 process x batch 6, and never the same one."""
    dataset = GPTDataset(np.arange(1000, dtype=np.uint16), 10, 10)  # 99 windows: 16 global batches of 6
    single = make_dataloader(dataset, batch_size=6, shuffle=True, drop_last=True, seed=5)
    ranks = [make_dataloader(dataset, batch_size=3, shuffle=True, drop_last=True, seed=5, rank=r,
                             world_size=2) for r in (0, 1)]
    for loader in (single, *ranks):
        loader.sampler.set_position(epoch=2, skip_batches=skip_batches)
    assert len(ranks[0]) == len(ranks[1]) == len(single) == 16 - skip_batches
    for whole, part0, part1 in zip(single, *ranks):
        assert torch.equal(whole[0], torch.cat([part0[0], part1[0]]))
        assert not set(part0[0][:, 0].tolist()) & set(part1[0][:, 0].tolist())


def test_random_windows_split_across_ranks():
    tokens = np.arange(5000, dtype=np.uint16)
    whole = RandomWindows(tokens, 16, batch_size=4, seed=1).batch(3)[0]
    parts = [RandomWindows(tokens, 16, batch_size=2, seed=1, rank=r, world_size=2).batch(3)[0] for r in (0, 1)]
    assert torch.equal(whole, torch.cat(parts))
