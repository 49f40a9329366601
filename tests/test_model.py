import pytest
import torch

from gptcore.model.gpt import GPT, KVCache, ModelConfig, sinusoidal_table, vocab_padded_linear


def count_parameters(**overrides) -> int:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        return GPT(ModelConfig.from_preset("gpt2-small", **overrides)).num_parameters()


def test_gpt2_small_parameter_counts():
    assert count_parameters(qkv_bias=False, tie_embeddings=False) == 163_009_536
    assert count_parameters(qkv_bias=False, tie_embeddings=True) == 124_412_160
    assert count_parameters(qkv_bias=True, tie_embeddings=True) == 124_439_808  # OpenAI's checkpoint


@pytest.mark.parametrize("preset,layers,heads,width", [
    ("gpt2-medium", 24, 16, 1024), ("gpt2-large", 36, 20, 1280), ("gpt2-xl", 48, 25, 1600)])
def test_larger_presets(preset, layers, heads, width):
    config = ModelConfig.from_preset(preset)
    assert (config.n_layers, config.n_heads, config.emb_dim) == (layers, heads, width)


@pytest.mark.parametrize("overrides,field", [
    (dict(emb_dim=100, n_heads=12), "emb_dim"),
    (dict(n_layers=0), "n_layers"),
    (dict(context_length=-5), "context_length"),
    (dict(vocab_size=2.5), "vocab_size"),
    (dict(drop_rate=1.0), "drop_rate"),
    (dict(drop_rate=-0.1), "drop_rate"),
    (dict(pos_embedding="rotary"), "pos_embedding"),
    (dict(qkv_bias="yes"), "qkv_bias"),
])
def test_invalid_config_names_field_and_value(overrides, field):
    with pytest.raises(ValueError, match=field) as error:
        ModelConfig.from_preset("gpt2-small", **overrides)
    assert str(list(overrides.values())[-1]) in str(error.value)


def test_unknown_preset_and_field():
    with pytest.raises(ValueError, match="gpt2-huge"):
        ModelConfig.from_preset("gpt2-huge")
    with pytest.raises(ValueError, match="n_embd"):
        ModelConfig.from_preset("tiny", n_embd=8)


@pytest.mark.parametrize("pos_embedding", ["learned", "sinusoidal"])
def test_forward_shapes_and_initial_loss(pos_embedding):
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny", pos_embedding=pos_embedding)).eval()
    idx, targets = torch.randint(0, 50257, (2, 3, 20))
    logits, loss = model(idx, targets=targets)
    assert logits.shape == (3, 20, 50257)
    # a fresh model predicts nearly uniformly: loss close to ln(vocab) = 10.82
    assert abs(loss.item() - 10.82) < 0.3
    last, _ = model(idx, last_token_only=True)
    torch.testing.assert_close(last[:, 0], logits[:, -1])


def test_sinusoidal_table_matches_formula():
    table = sinusoidal_table(10, 8)
    pos, i = 7, 2  # dims 2i and 2i+1
    angle = pos / 10000 ** (2 * i / 8)
    assert table[pos, 2 * i].item() == pytest.approx(torch.sin(torch.tensor(angle)).item(), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(torch.cos(torch.tensor(angle)).item(), abs=1e-6)
    assert "sinusoidal_pos" not in dict(GPT(ModelConfig.from_preset("tiny", pos_embedding="sinusoidal"))
                                        .named_parameters())


def test_causality_future_tokens_do_not_change_past_logits():
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny")).eval()
    idx = torch.randint(0, 50257, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = torch.randint(0, 50257, (6,))
    torch.testing.assert_close(model(idx)[0][:, :10], model(changed)[0][:, :10])


def test_kv_cache_logits_equal_full_forward():
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny")).eval()
    idx = torch.randint(0, 50257, (2, 24))
    full, _ = model(idx)
    cache = KVCache(model.config, 2, "cpu", torch.float32)
    prefill, _ = model(idx[:, :10], kv_cache=cache)
    chunk, _ = model(idx[:, 10:13], kv_cache=cache)  # several tokens on a non-empty cache
    steps = [model(idx[:, t:t + 1], kv_cache=cache)[0] for t in range(13, 24)]
    torch.testing.assert_close(torch.cat([prefill, chunk, *steps], dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.length == 24


def test_too_long_input_is_refused():
    model = GPT(ModelConfig.from_preset("tiny"))
    with pytest.raises(ValueError, match="context_length 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_tied_embeddings_share_storage():
    model = GPT(ModelConfig.from_preset("tiny"))
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    untied = GPT(ModelConfig.from_preset("tiny", tie_embeddings=False))
    assert untied.lm_head.weight.data_ptr() != untied.transformer.wte.weight.data_ptr()


def test_the_padded_head_gives_the_logits_and_gradients_of_the_plain_one():
    # the CUDA head's math, run here in fp64 so that only a wrong padding or slice could differ
    torch.manual_seed(0)
    x = torch.randn(2, 5, 48, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50257, 48, dtype=torch.float64, requires_grad=True)
    padded = vocab_padded_linear(x, weight)
    assert padded.shape == (2, 5, 50257)
    plain = torch.nn.functional.linear(x, weight)
    torch.testing.assert_close(padded, plain, rtol=1e-12, atol=1e-12)
    upstream = torch.randn_like(plain)
    grads_padded = torch.autograd.grad(padded, (x, weight), upstream)
    grads_plain = torch.autograd.grad(plain, (x, weight), upstream)
    for got, expected in zip(grads_padded, grads_plain):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    aligned = weight[:50240]  # already a multiple of 64: the plain product
    assert torch.equal(vocab_padded_linear(x, aligned), torch.nn.functional.linear(x, aligned))
