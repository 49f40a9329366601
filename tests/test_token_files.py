import json

import numpy as np

from gptcore.data.corpus import prepare_corpus, resolve_sources, safe_cut
from gptcore.data.token_files import load_tokens, tokenize_file, tokenize_splits
from gptcore.settings.data import VERDICT_SHA256, VERDICT_URL


def test_verdict_token_files(shared_dir, tmp_path, tokenizer):
    prepare_corpus(resolve_sources(VERDICT_URL, VERDICT_SHA256), tmp_path / "prepared")
    meta = tokenize_splits(tmp_path / "prepared", tmp_path / "tokens")
    train, val = load_tokens(tmp_path / "tokens" / "train.bin"), load_tokens(tmp_path / "tokens" / "val.bin")
    assert isinstance(train.base, np.memmap) and train.dtype == np.uint16  # a view of the map
    assert meta["splits"]["train"]["tokens"] == len(train) == 4612
    assert meta["splits"]["val"]["tokens"] == len(val) == 534
    # the whole corpus is the seed's 5,145 tokens; cutting mid-word at 90 % adds one
    assert len(tokenizer.encode((shared_dir / "data" / "the-verdict.txt").read_text())) == 5145
    assert tokenizer.decode(train[:4].tolist()) == "I HAD always"
    assert json.loads((tmp_path / "tokens" / "meta.json").read_text())["n_vocab"] == 50257


def test_chunked_tokenization_equals_whole_text(shared_dir, tmp_path, tokenizer):
    source = shared_dir / "data" / "tinyshakespeare.txt"
    text = source.read_text()[:200_000]
    (tmp_path / "part.txt").write_text(text)
    count = tokenize_file(tmp_path / "part.txt", tmp_path / "part.bin", tokenizer, chunk_chars=5000)
    assert load_tokens(tmp_path / "part.bin").tolist() == tokenizer.encode(text)
    assert count == len(tokenizer.encode(text))


def test_safe_cut_only_between_non_space_characters():
    assert safe_cut("abc\ndef") == 4
    assert safe_cut("abc \ndef\n\nghi") == len("abc \ndef\n\nghi")  # no newline with solid neighbours
    assert safe_cut("no newline at all") == len("no newline at all")
