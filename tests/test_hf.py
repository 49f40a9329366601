import json
from dataclasses import replace

import pytest
import torch

from gptcore.errors import DownloadError
from gptcore.formats.huggingface import config_from_hf, export_hf, load_hf_folder, load_hf_state_dict, load_official
from gptcore.model.gpt import GPT, ModelConfig

transformers = pytest.importorskip("transformers")


def random_hf_model(tie=True):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=128, n_embd=64, n_layer=3, n_head=4,
                                     tie_word_embeddings=tie)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # make the biases and LayerNorms non-trivial so a mis-mapping shows
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                param.add_(0.1 * torch.randn_like(param))
    return model


def max_logit_difference(gptcore_model, hf_model):
    idx = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return (gptcore_model.eval()(idx)[0] - hf_model(idx).logits).abs().max().item()


@pytest.mark.parametrize("tie", [True, False])
def test_hf_to_gptcore_logits_match(tie):
    hf_model = random_hf_model(tie)
    config = config_from_hf(hf_model.config.to_dict())
    assert config.tie_embeddings is tie and config.qkv_bias
    model = load_hf_state_dict(GPT(config), hf_model.state_dict())
    assert max_logit_difference(model, hf_model) < 1e-5


@pytest.mark.parametrize("overrides", [
    dict(), dict(tie_embeddings=False), dict(pos_embedding="sinusoidal"), dict(qkv_bias=True)])
def test_gptcore_export_loads_in_transformers(tmp_path, overrides):
    torch.manual_seed(0)
    model = GPT(ModelConfig.from_preset("tiny", **overrides)).eval()
    export_hf(model, tmp_path)
    hf_model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert max_logit_difference(model, hf_model) < 1e-5
    assert json.loads((tmp_path / "config.json").read_text())["n_positions"] == 64
    # and back again through the folder loader
    assert max_logit_difference(load_hf_folder(tmp_path), hf_model) < 1e-5


def test_hf_weights_into_mismatched_config_name_the_tensor():
    hf_model = random_hf_model()
    wrong = GPT(ModelConfig(vocab_size=50257, context_length=128, emb_dim=64, n_heads=4, n_layers=3,
                            qkv_bias=False))
    with pytest.raises(ValueError, match="c_attn.bias"):
        load_hf_state_dict(wrong, hf_model.state_dict())


def test_official_weights_offline_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    import huggingface_hub.constants as hub_constants
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DownloadError, match="cannot download 'gpt2'.*save_pretrained"):
        load_official("gpt2")
    with pytest.raises(ValueError, match="gpt2-huge"):
        load_official("gpt2-huge")


def test_pickle_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="pickle"):
        load_hf_folder(tmp_path)


def test_initialize_from_a_saved_hf_folder_checks_the_config(tmp_path):
    from gptcore.formats.loading import initialize_model

    hf_model = random_hf_model()
    hf_model.save_pretrained(tmp_path)  # safetensors by default
    config = ModelConfig(context_length=128, emb_dim=64, n_heads=4, n_layers=3, qkv_bias=True, drop_rate=0.2)
    model = initialize_model(config, str(tmp_path))
    assert model.config.drop_rate == 0.2 and max_logit_difference(model, hf_model) < 1e-5
    with pytest.raises(ValueError, match=r"model.qkv_bias is False in params but True in the weights"):
        initialize_model(ModelConfig(context_length=128, emb_dim=64, n_heads=4, n_layers=3), str(tmp_path))
    with pytest.raises(FileNotFoundError, match="init_from"):
        initialize_model(config, str(tmp_path / "missing"))


def test_initialize_with_a_shorter_context_crops_positions_and_keeps_outputs(tmp_path):
    from gptcore.formats.loading import initialize_model

    random_hf_model().save_pretrained(tmp_path)  # 128 positions
    config = ModelConfig(context_length=128, emb_dim=64, n_heads=4, n_layers=3, qkv_bias=True, drop_rate=0.0)
    full = initialize_model(config, str(tmp_path)).eval()
    cropped = initialize_model(replace(config, context_length=32), str(tmp_path)).eval()
    assert cropped.config.context_length == 32 and cropped.transformer.wpe.weight.shape == (32, 64)
    assert full.num_parameters() - cropped.num_parameters() == (128 - 32) * 64
    ids = torch.randint(0, config.vocab_size, (2, 32))
    assert torch.allclose(cropped(ids)[0], full(ids)[0], atol=1e-6)
    with pytest.raises(ValueError, match="sequence of 33 tokens exceeds context_length 32"):
        cropped(torch.randint(0, config.vocab_size, (1, 33)))
    with pytest.raises(ValueError, match="model.context_length is 256 in params but 128 in the weights"):
        initialize_model(replace(config, context_length=256), str(tmp_path))
