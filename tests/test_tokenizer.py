import os
import subprocess
import sys


def test_gpt2_bpe_ids(tokenizer):
    assert tokenizer.n_vocab == 50257
    assert tokenizer.eot_id == 50256
    assert tokenizer.encode("Hello, world") == [15496, 11, 995]
    assert tokenizer.encode("Every effort moves you") == [6109, 3626, 6100, 345]


def test_endoftext_is_one_token_and_roundtrips(tokenizer):
    text = "Hello.<|endoftext|> In the sunlit terraces of someunknownPlace."
    ids = tokenizer.encode(text)
    assert ids.count(50256) == 1
    assert tokenizer.decode(ids) == text
    assert tokenizer.encode_batch(["a b", "<|endoftext|>"]) == [tokenizer.encode("a b"), [50256]]


def test_missing_vocabulary_says_how_to_work_offline(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("GPTCORE_MIRROR", "TIKTOKEN_CACHE_DIR")}
    env.update(TIKTOKEN_CACHE_DIR=str(tmp_path), HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    result = subprocess.run([sys.executable, "-c", "from gptcore.tokenizer import Tokenizer; Tokenizer()"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "TIKTOKEN_CACHE_DIR" in result.stderr and "GPTCORE_MIRROR" in result.stderr
