import pytest
import torch

from gptcore.model.gpt import GPT, ModelConfig
from gptcore.model.sampling import filter_logits, generate, next_token


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return GPT(ModelConfig.from_preset("tiny", context_length=64)).eval()


def test_greedy_with_cache_equals_without_while_window_slides(tiny_model):
    prompt = torch.randint(0, 50257, (2, 5), generator=torch.Generator().manual_seed(1))
    cached = generate(tiny_model, prompt, 300, use_cache=True)
    uncached = generate(tiny_model, prompt, 300, use_cache=False)
    assert cached.shape == (2, 305)
    assert torch.equal(cached, uncached)


def test_prompt_longer_than_context_is_cropped(tiny_model):
    prompt = torch.randint(0, 50257, (1, 100), generator=torch.Generator().manual_seed(2))
    out = generate(tiny_model, prompt, 10)
    assert torch.equal(out[:, :100], prompt)
    # the first new token depends only on the last 64 prompt tokens
    assert out[0, 100] == generate(tiny_model, prompt[:, -64:], 1)[0, 64]


def test_top_k_1_equals_greedy(tiny_model):
    prompt = torch.tensor([[6109, 3626, 6100, 345]])
    greedy = generate(tiny_model, prompt, 30)
    assert torch.equal(generate(tiny_model, prompt, 30, temperature=1.5, top_k=1, seed=3), greedy)


def test_top_k_never_picks_outside_k_most_likely():
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(0))
    allowed = torch.topk(logits, 5, dim=-1).indices
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        token = next_token(logits, temperature=2.0, top_k=5, generator=generator)
        assert (allowed == token).any(dim=-1).all()


def test_top_p_keeps_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]])
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.8))
    assert kept.tolist() == [[True, True, True, False, False]]  # 0.5 + 0.2 < 0.8 <= 0.85
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.7))
    assert kept.tolist() == [[True, True, False, False, False]]  # exactly 0.7 is enough
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.1))
    assert kept.tolist() == [[True, False, False, False, False]]


def test_same_seed_same_text_different_seed_differs(tiny_model):
    prompt = torch.tensor([[6109, 3626]])
    a = generate(tiny_model, prompt, 40, temperature=1.0, top_p=0.95, seed=7)
    b = generate(tiny_model, prompt, 40, temperature=1.0, top_p=0.95, seed=7)
    c = generate(tiny_model, prompt, 40, temperature=1.0, top_p=0.95, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_eos_stops_and_pads(tiny_model):
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    greedy = generate(tiny_model, prompt, 5)
    eos = int(greedy[0, 4])  # the second token sequence 0 generates
    out = generate(tiny_model, prompt, 50, eos_id=eos)
    assert out[0, 4] == eos and (out[0, 4:] == eos).all()
    assert out.size(1) <= 53


@pytest.mark.parametrize("kwargs,word", [
    (dict(temperature=-1.0), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(max_new_tokens=-1), "max_new_tokens"),
])
def test_invalid_sampler_settings_rejected(tiny_model, kwargs, word):
    args = dict(max_new_tokens=5) | kwargs
    with pytest.raises(ValueError, match=word):
        generate(tiny_model, torch.tensor([[1, 2]]), **args)


def test_empty_prompt_rejected(tiny_model):
    with pytest.raises(ValueError, match="empty prompt"):
        generate(tiny_model, torch.zeros(1, 0, dtype=torch.long), 5)


def test_a_vocabulary_padded_past_gpt2s_never_samples_the_padding():
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny", vocab_size=50304))
    prompt = torch.randint(0, 50257, (2, 4))
    with torch.no_grad():  # the padding rows: the likeliest row scaled up, so the model prefers them
        model.lm_head.weight[50257:] = 10 * model.lm_head.weight[model(prompt)[0][0, -1].argmax()]
        assert model(prompt)[0][0, -1].argmax() >= 50257
    for temperature in (0.0, 1.0):
        out = generate(model, prompt, 20, temperature=temperature, seed=1)
        assert out.max() < 50257
