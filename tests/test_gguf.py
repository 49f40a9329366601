"""`gptcore export-gguf`: llama.cpp's GGUF and an Ollama Modelfile. The file is read back with llama.cpp's own
`gguf` reader here; the slow tests run it in llama.cpp itself through llama-cpp-python, which PyPI
ships as source only (a 5 to 10 minute build on 2 cores: see docs/reference.md) and skip where it is not
installed."""

import os
import shutil
import sys

import numpy as np
import pytest
import torch

from gptcore.cli import main
from gptcore.formats.adapters import save_trained
from gptcore.formats.model_folder import save_model
from gptcore.model.gpt import GPT, ModelConfig
from gptcore.model.lora import apply_lora
from gptcore.model.sampling import generate
from gptcore.settings.instruct import InstructConfig
from gptcore.settings.lora import LoraConfig
from gptcore.tasks.instruction_tuning import Template, save_instruct_info

gguf = pytest.importorskip("gguf")
PROMPTS_WORDS = 6


def gpt2_init_model(seed: int = 0) -> GPT:
    """A tiny GPT drawn as GPT-2 draws its weights: greedy continuations differ from prompt to prompt."""
    torch.manual_seed(seed)
    return GPT(ModelConfig.from_preset("tiny", qkv_bias=True)).eval()


def export(source, out, weights="f32") -> int:
    return main(["export-gguf", str(source), str(out), "--type", weights])


@pytest.mark.parametrize("weights", ["f32", "f16", "q8_0"])
def test_the_gguf_holds_gpt2_as_llama_cpp_names_it_with_gpt2s_tokenizer(tmp_path, weights, capsys):
    model = gpt2_init_model()
    save_model(model, tmp_path / "model")
    assert export(tmp_path / "model", tmp_path / "model.gguf", weights) == 0
    reader = gguf.GGUFReader(tmp_path / "model.gguf")

    def field(key):
        return reader.get_field(key).contents()

    assert field("general.architecture") == "gpt2" and field("gpt2.block_count") == 2
    assert field("gpt2.context_length") == 64 and field("gpt2.attention.head_count") == 2
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert len(field("tokenizer.ggml.tokens")) == 50257 and field("tokenizer.ggml.eos_token_id") == 50256
    assert len(field("tokenizer.ggml.merges")) == 50000
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    assert tensors["blk.0.attn_qkv.weight"].tensor_type.name == weights.upper()
    assert tensors["position_embd.weight"].tensor_type.name == "F32"  # as llama.cpp's converter keeps it
    assert tensors["blk.1.ffn_norm.bias"].tensor_type.name == "F32"
    up = tensors["blk.1.ffn_up.weight"]
    data = gguf.quants.dequantize(up.data, up.tensor_type).reshape(256, 64)  # llama.cpp's (out, in)
    atol = {"f32": 0, "f16": 1e-3, "q8_0": 2e-2}[weights]  # the type's rounding of weights of size ~0.1
    np.testing.assert_allclose(data, model.transformer.h[1].mlp.c_fc.weight.detach().numpy(), atol=atol, rtol=0)
    modelfile = (tmp_path / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n") and 'PARAMETER stop "<|endoftext|>"' in modelfile


def test_an_instruction_models_gguf_keeps_its_chat_template_and_its_modelfile_ollamas_template(tmp_path, capsys):
    config = InstructConfig()
    save_model(gpt2_init_model(), tmp_path / "instruct")
    save_instruct_info(tmp_path / "instruct", Template.of(config), config, {"base": "base"})
    assert export(tmp_path / "instruct", tmp_path / "instruct.gguf") == 0
    reader = gguf.GGUFReader(tmp_path / "instruct.gguf")
    assert "ns.instruction" in reader.get_field("tokenizer.chat_template").contents()
    modelfile = (tmp_path / "Modelfile").read_text()
    assert ('TEMPLATE """Below is an instruction that describes a task. Write a response that appropriately '
            'completes the request.\n\n### Instruction:\n{{ .Prompt }}\n\n### Response:\n"""') in modelfile
    assert "PARAMETER temperature 0\n" in modelfile and "PARAMETER num_predict 256\n" in modelfile
    assert "PARAMETER num_ctx 64\n" in modelfile  # llama.cpp aborts a GPT-2 that generates past its positions


def test_bad_gguf_exports_are_refused_in_one_line_before_any_work(tmp_path, capsys):
    from test_export import classifier_folder

    save_model(gpt2_init_model(), tmp_path / "model")
    classifier_folder(tmp_path / "classifier", "last_token")
    torch.manual_seed(0)
    save_model(GPT(ModelConfig.from_preset("tiny", vocab_size=1000)), tmp_path / "small-vocab")
    save_model(gpt2_init_model(), tmp_path / "gone")
    adapted, lora = gpt2_init_model(), LoraConfig(rank=2, alpha=4.0, save="adapter", layers=["query", "value"])
    apply_lora(adapted, lora)
    save_trained(adapted, tmp_path / "adapters", lora, str(tmp_path / "gone"))
    shutil.rmtree(tmp_path / "gone")
    cases = [
        (["export-gguf", str(tmp_path / "model"), str(tmp_path / "m.gguf"), "--type", "q4_0"],
         "--type 'q4_0' is not a GGUF type gptcore writes; choose f32, f16, q8_0"),
        (["export-gguf", str(tmp_path / "classifier"), str(tmp_path / "c.gguf")],
         f"{tmp_path / 'classifier'} is a classifier: llama.cpp has no classification head, so it has no GGUF; "
         "export it for transformers (gptcore export-hf)"),
        (["export-gguf", str(tmp_path / "small-vocab"), str(tmp_path / "s.gguf")],
         "the model's vocabulary has 1,000 tokens, not GPT-2's 50,257: a GGUF embeds GPT-2's tokenizer, which would "
         "not name its tokens; export it as a Hugging Face folder instead (gptcore export-hf)"),
        (["export-gguf", str(tmp_path / "adapters"), str(tmp_path / "a.gguf")],
         f"{tmp_path / 'gone'} holds no gptcore model (model_config.json + model.safetensors), no Hugging Face GPT-2 "
         "folder (config.json + model.safetensors) and is no book file (model.pth)"),
        (["export-gguf", str(tmp_path / "model"), str(tmp_path / "missing" / "m.gguf")],
         f"{tmp_path / 'missing'} does not exist: create it, or write the export elsewhere"),
    ]
    for argv, message in cases:
        assert main(argv) == 1
        assert capsys.readouterr().err == f"gptcore export-gguf: error: {message}\n"
    assert not list(tmp_path.glob("*.gguf"))


# -- in llama.cpp itself -----------------------------------------------------------------------------

def llama(path, **options):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (PyPI ships its source "
                                                        "only; build it with pip install llama-cpp-python)")
    return llama_cpp.Llama(model_path=str(path), n_ctx=64, n_threads=2, verbose=False, **options)


@pytest.mark.slow
def test_llama_cpp_decodes_the_f32_gguf_greedy_as_gptcore_and_tokenizes_as_tiktoken(tmp_path, shared_dir,
                                                                                      tokenizer, capsys):
    """20 prompts x 40 tokens. llama.cpp's GELU reads a float16 table, so its f32 logits are ~1e-4 from
    gptcore's (checked below): a greedy token may differ only where gptcore's two best logits are closer than
    that, and the continuation is compared up to the first such near-tie."""
    model = gpt2_init_model()
    save_model(model, tmp_path / "model")
    assert export(tmp_path / "model", tmp_path / "model.gguf") == 0
    words = (shared_dir / "data" / "the-verdict.txt").read_text().split()
    prompts = [" ".join(words[i * 50:i * 50 + PROMPTS_WORDS]) for i in range(20)]
    engine = llama(tmp_path / "model.gguf", logits_all=True)
    try:
        compared = 0
        for prompt in prompts:
            ids = tokenizer.encode(prompt)
            assert engine.tokenize(prompt.encode(), add_bos=False, special=True) == ids
            mine = generate(model, torch.tensor([ids]), 40, eos_id=50256)[0].tolist()
            with torch.no_grad():
                logits = model(torch.tensor([mine]))[0][0]
            engine.reset()
            engine.eval(mine)
            theirs_logits = np.array(engine.scores[:len(mine)])
            np.testing.assert_allclose(theirs_logits, logits.numpy(), atol=1e-3, rtol=0)
            top2 = logits.topk(2).values
            margins = (top2[:, 0] - top2[:, 1])[len(ids) - 1:-1]
            sure = int(next((i for i, margin in enumerate(margins) if margin < 2e-3), len(margins)))
            theirs = [token for _, token in zip(range(40), engine.generate(ids, temp=0.0, reset=True))]
            assert theirs[:sure] == mine[len(ids):len(ids) + sure], prompt
            compared += sure
        assert compared >= 600  # most of the 800 tokens are compared
        for text in [(shared_dir / "data" / "the-verdict.txt").read_text(), "a <|endoftext|> b\n\n  c\t\u00e9 "]:
            assert engine.tokenize(text.encode(), add_bos=False, special=True) == tokenizer.encode(text)
    finally:
        engine.close()


@pytest.mark.slow
def test_llama_cpp_applies_the_instruction_models_chat_template(tmp_path, tokenizer, capsys):
    config = InstructConfig()
    save_model(gpt2_init_model(), tmp_path / "instruct")
    template = Template.of(config)
    save_instruct_info(tmp_path / "instruct", template, config, {"base": "base"})
    assert export(tmp_path / "instruct", tmp_path / "instruct.gguf") == 0
    engine = llama(tmp_path / "instruct.gguf")
    try:
        reply = engine.create_chat_completion([{"role": "user", "content": "Say hi"}], max_tokens=5, temperature=0)
        prompt_tokens = reply["usage"]["prompt_tokens"]
        assert prompt_tokens == len(tokenizer.encode(template.format_prompt("Say hi") + template.response))
    finally:
        engine.close()


# -- an OpenAI-compatible endpoint from a real engine: llama.cpp's server --------------------------------

def end_of_text_model() -> GPT:
    """A tiny GPT whose every next token is <|endoftext|> (its final LayerNorm outputs one fixed vector, which
    only that token's row of the head reads strongly)."""
    model = gpt2_init_model()
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight[50256] = 10.0
    return model


@pytest.mark.slow
def test_llama_cpps_openai_server_serves_the_instruction_model_to_the_openai_client_and_the_judge(tmp_path, tokenizer,
                                                                                                   capsys):
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    openai = pytest.importorskip("openai")
    from conftest import Server, free_port

    from gptcore.evaluation.judge import ask, check_judge
    from gptcore.settings.judge import JudgeConfig

    config = InstructConfig()
    template = Template.of(config)
    for name, model in (("instruct", gpt2_init_model()), ("ends", end_of_text_model())):
        save_model(model, tmp_path / name)
        save_instruct_info(tmp_path / name, template, config, {"base": "base"})
        assert export(tmp_path / name, tmp_path / f"{name}.gguf") == 0
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(tmp_path / "instruct.gguf"), "--port",
               str(port), "--n_ctx", "64", "--n_threads", "2", "--verbose", "false"]
    with Server(command, port, tmp_path, dict(os.environ), ready_path="/v1/models") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        messages = [{"role": "user", "content": "Say hi"}]
        reply = client.chat.completions.create(model="gptcore", messages=messages, max_tokens=8, temperature=0)
        prompt = template.format_prompt("Say hi") + template.response  # the chat template, applied by the server
        assert reply.usage.prompt_tokens == len(tokenizer.encode(prompt))
        ids = tokenizer.encode(prompt)
        expected = generate(gpt2_init_model(), torch.tensor([ids]), 8, eos_id=50256)[0, len(ids):].tolist()
        assert reply.choices[0].message.content == tokenizer.decode(expected)  # gptcore's greedy tokens
        stream = client.chat.completions.create(model="gptcore", messages=messages, max_tokens=8, temperature=0,
                                                stream=True)
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream) == reply.choices[0].message.content
        completion = client.completions.create(model="gptcore", prompt=prompt, max_tokens=8, temperature=0)
        assert completion.choices[0].text == reply.choices[0].message.content
    port = free_port()
    command[command.index("--model") + 1], command[command.index("--port") + 1] = str(tmp_path / "ends.gguf"), str(port)
    with Server(command, port, tmp_path, dict(os.environ), ready_path="/v1/models") as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        reply = client.chat.completions.create(model="gptcore", messages=[{"role": "user", "content": "Say hi"}],
                                               max_tokens=8, temperature=0)
        assert reply.choices[0].finish_reason == "stop" and reply.choices[0].message.content == ""
        assert reply.usage.completion_tokens <= 1  # stopped at end-of-text, not at max_tokens
        # the judge client speaks its API; it sends no max_tokens (as the book's), and llama.cpp aborts a GPT-2
        # generating past its context (learned positions), so it asks the model that ends at once
        judge = JudgeConfig(enabled=True, api="openai", url=f"{url}/v1/chat/completions", model="gptcore",
                            timeout_seconds=60)
        check_judge(judge)
        assert ask(judge, "Say hi") == reply.choices[0].message.content
