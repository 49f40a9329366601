"""Document sources (JSONL, Parquet, text files as documents) -> token shards, against tiktoken's own encoding of
each document; the shards read as one stream; a killed tokenize resumed; bad input in one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gptcore.data.corpus import CorpusError
from gptcore.data.documents import prepare_data
from gptcore.data.loaders import GPTDataset, RandomWindows
from gptcore.data.shards import (HEADER_BYTES, MAGIC, ShardError, ShardedTokens, load_split, read_header,
                                 shard_header, split_shards, tokenize_documents, write_shards)
from gptcore.settings.data import DataConfig

REPO = Path(__file__).resolve().parents[1]
SHARD_TOKENS = 5000


@pytest.fixture(scope="module")
def documents(shared_dir) -> list[str]:
    """1,100 documents of 20 to 300 tokens: the book's instructions with their answers."""
    return [entry["instruction"] + "\n\n" + entry["output"]
            for entry in json.loads((shared_dir / "data" / "instruction-data.json").read_text())]


def write_jsonl(path: Path, documents: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": index, "text": text}) + "\n" for index, text in enumerate(documents)))
    return path


def write_parquet(path: Path, documents: list[str], field: str = "text") -> Path:
    pq.write_table(pa.table({"id": list(range(len(documents))), field: documents}), path, row_group_size=300)
    return path


def expected_splits(documents: list[str], tokenizer) -> dict[str, list[int]]:
    """GPT-2's and build-nanogpt's layout by hand: each document's encode_ordinary, then <|endoftext|>; document
    d validates when (d + 1) // 10 > d // 10 (train_ratio 0.9: every 10th, exact integers)."""
    splits = {"train": [], "val": []}
    for index, text in enumerate(documents):
        split = "val" if (index + 1) // 10 > index // 10 else "train"
        splits[split] += tokenizer.encoding.encode_ordinary(text) + [tokenizer.eot_id]
    return splits


def shard(root: Path, source: Path, **settings) -> dict:
    prepare_data(DataConfig(source=str(source), sha256=None, shard_tokens=SHARD_TOKENS, **settings), root / "prepared")
    return tokenize_documents(root / "prepared", root / "tokens", root / "work", workers=2, start_method="spawn")


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_documents_become_shards_each_followed_by_endoftext(kind, documents, tokenizer, tmp_path):
    """Worker processes started by spawn (macOS' and Windows' only way) tokenize; every shard but a split's last
    holds shard_tokens ids behind a header naming its tokenizer and source."""
    source = (write_jsonl if kind == "jsonl" else write_parquet)(tmp_path / f"docs.{kind}", documents)
    meta = shard(tmp_path, source)
    expected = expected_splits(documents, tokenizer)
    for split in ("train", "val"):
        tokens = load_split(tmp_path / "tokens", split)
        assert isinstance(tokens, ShardedTokens)
        assert tokens[0:len(tokens)].tolist() == expected[split]
        headers = [read_header(path) for path in split_shards(tmp_path / "tokens", split)]
        assert [h["tokens"] for h in headers[:-1]] == [SHARD_TOKENS] * (len(headers) - 1)
        assert {h["tokenizer"] for h in headers} == {"gpt2"}
        assert {h["source_sha256"] for h in headers} == {meta["source_sha256"]}
        assert meta["splits"][split]["tokens"] == len(expected[split])
        assert meta["splits"][split]["shards"] == -(-len(expected[split]) // SHARD_TOKENS)
    assert meta["splits"]["val"]["documents"] == 110 and meta["splits"]["train"]["shards"] > 1
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


def test_text_files_are_documents_in_the_shards_layout(tmp_path, tokenizer, shared_dir):
    """A folder of .txt files: one file, one document followed by <|endoftext|>; a large file is read in chunks
    that tokenize as the whole file does."""
    folder = tmp_path / "texts"
    folder.mkdir()
    texts = [(shared_dir / "data" / "the-verdict.txt").read_text(), "A short one with <|endoftext|> in it.\n"]
    texts += [f"Document {n}.\n" for n in range(8)]
    for index, text in enumerate(texts):
        (folder / f"{index:02d}.txt").write_text(text)
    shard(tmp_path, folder, layout="shards")
    expected = expected_splits(texts, tokenizer)  # the literal <|endoftext|> stays text, as in build-nanogpt
    for split in ("train", "val"):
        tokens = load_split(tmp_path / "tokens", split)
        assert tokens[0:len(tokens)].tolist() == expected[split]


def test_shards_read_as_the_one_file_they_cut(tmp_path):
    """Windows across a shard boundary and every batch of the book's and nanoGPT's samplers equal those of one
    file holding the same tokens."""
    stream = np.random.default_rng(0).integers(0, 50257, 10 * 997 + 13).astype(np.uint16)
    sharded = ShardedTokens(write_shards(stream, tmp_path, "train", 11))
    assert len(sharded) == len(stream) and len(sharded.shards) == 11
    assert sharded[990:3000].tolist() == stream[990:3000].tolist()
    assert sharded[len(stream) - 5:len(stream) + 5].tolist() == stream[-5:].tolist()
    one, many = GPTDataset(stream, 64, 50), GPTDataset(sharded, 64, 50)
    assert len(one) == len(many)
    for index in range(len(one)):
        assert all(torch.equal(a, b) for a, b in zip(one[index], many[index]))
    one, many = (RandomWindows(tokens, 128, batch_size=8, seed=3) for tokens in (stream, sharded))
    for step in range(20):
        assert all(torch.equal(a, b) for a, b in zip(one.batch(step), many.batch(step)))


KILL_AFTER_THIRD_SHARD = """
import os, signal, sys
from gptcore.data import documents, shards
documents.ITEM_BYTES = 16384  # several items per shard: progress is saved at the items that finish one
close_shard = shards.ShardWriter.close_shard
calls = []
def close_then_die(self):
    close_shard(self)
    calls.append(1)
    if len(calls) == 3:  # the shard renamed, the progress not yet saved: the narrowest window
        os.kill(os.getpid(), signal.SIGKILL)
shards.ShardWriter.close_shard = close_then_die
if __name__ == "__main__":
    shards.tokenize_documents(sys.argv[1], sys.argv[2], sys.argv[3], workers=2)
"""


def test_a_killed_tokenize_continues_to_identical_shards(documents, tmp_path):
    source = write_jsonl(tmp_path / "docs.jsonl", documents)
    straight = tmp_path / "straight"
    shard(straight, source)
    killed = tmp_path / "killed"
    prepare_data(DataConfig(source=str(source), sha256=None, shard_tokens=SHARD_TOKENS), killed / "prepared")
    (tmp_path / "kill.py").write_text(KILL_AFTER_THIRD_SHARD)
    arguments = [str(killed / name) for name in ("prepared", "tokens", "work")]
    run = subprocess.run([sys.executable, str(tmp_path / "kill.py"), *arguments], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == -9, run.stderr
    assert not (killed / "tokens").exists() and len(list((killed / "work").glob("*/train_*.bin"))) == 3
    captured = subprocess.run([sys.executable, "-c", "import sys; from gptcore.data import documents, shards; "
                               "documents.ITEM_BYTES = 16384; shards.tokenize_documents(*sys.argv[1:], workers=2)",
                               *arguments], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert captured.returncode == 0, captured.stderr
    assert "continuing after 2 finished shard(s)" in captured.stderr  # the third was finished, not yet recorded
    names = sorted(path.name for path in (straight / "tokens").iterdir())
    assert names == sorted(path.name for path in (killed / "tokens").iterdir())
    for name in names:
        assert (straight / "tokens" / name).read_bytes() == (killed / "tokens" / name).read_bytes(), name


def test_bad_documents_are_named_in_one_line_before_any_tokenizing(tmp_path, documents, capsys):
    def prepare(source, **settings):
        with pytest.raises(CorpusError) as error:
            prepare_data(DataConfig(source=str(source), sha256=None, **settings), tmp_path / "prepared")
        assert "\n" not in str(error.value)
        return str(error.value)

    parquet = write_parquet(tmp_path / "docs.parquet", documents[:20], field="content")
    assert prepare(parquet) == (f"{parquet} has no column 'text' (its columns: id, content); set data.text_field to "
                                f"the one holding the text")
    lines = write_jsonl(tmp_path / "docs.jsonl", documents[:20])
    with open(lines, "a") as handle:
        handle.write('{"text": "fine"}\n{"text": "cut off\n["a list"]\n{"body": "no text"}\n')
    assert prepare(lines).startswith(f"{lines}:22 is not JSON (")
    assert "set data.skip_bad_lines true" in prepare(lines)
    summary = prepare_data(DataConfig(source=str(lines), sha256=None, skip_bad_lines=True), tmp_path / "prepared")
    assert summary["documents"] == 21 and summary["skipped"] == 3
    assert "skipped 3 bad line(s)" in capsys.readouterr().err
    (tmp_path / "no_text.jsonl").write_text('{"body": "x"}\n')
    assert prepare(tmp_path / "no_text.jsonl") == (f"{tmp_path / 'no_text.jsonl'}:1 has no text field 'text' (its "
                                                   "fields: body); fix the line, set data.text_field, or set "
                                                   "data.skip_bad_lines true to skip such lines with a counted "
                                                   "warning")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert "holds no documents" in prepare(tmp_path / "empty.jsonl")
    assert "holds out no document of the 5" in prepare(write_jsonl(tmp_path / "five.jsonl", documents[:5]))
    assert "needs data.layout shards" in prepare(lines, layout="book")


def test_shards_of_another_tokenizer_or_format_are_refused(tmp_path):
    fields = {"format": 1, "dtype": "uint16", "tokenizer": "gpt2", "tokens": 4}
    cases = {"other_tokenizer": shard_header(fields | {"tokenizer": "cl100k_base"}),
             "older": shard_header(fields | {"format": 0}), "plain": b"\x00" * HEADER_BYTES}
    for name, header in cases.items():
        (tmp_path / f"{name}.bin").write_bytes(header + np.arange(4, dtype=np.uint16).tobytes())
    with pytest.raises(ShardError, match="ids of tokenizer 'cl100k_base', gptcore trains on uint16 ids of 'gpt2'"):
        read_header(tmp_path / "other_tokenizer.bin")
    with pytest.raises(ShardError, match="a shard of format 0, this gptcore reads format 1; run the tokenize stage"):
        read_header(tmp_path / "older.bin")
    with pytest.raises(ShardError, match="is not a gptcore token shard"):
        read_header(tmp_path / "plain.bin")
    (tmp_path / "short.bin").write_bytes(shard_header(fields) + b"\x00\x00")
    with pytest.raises(ShardError, match="was cut short"):
        read_header(tmp_path / "short.bin")
    assert MAGIC.endswith(b"\n")
