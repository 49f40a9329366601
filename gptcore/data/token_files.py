"""Text -> uint16 token files (nanoGPT's .bin convention) and memory-mapped reading.

Tokenization streams: the text is read in chunks cut where GPT-2's pre-tokenizer would cut anyway
(after a newline between two non-space characters), so the tokens equal those of the whole text, and
batches of chunks are encoded on all cores (tiktoken releases the GIL in its threads).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, atomic_write_text
from ..errors import MissingInputError
from ..machine import physical_cores
from ..model.tokenizer import Tokenizer
from .corpus import CHUNK_CHARS, CorpusError, iter_safe_chunks, sha256_file

TOKEN_DTYPE = np.uint16  # GPT-2's 50,257 ids fit in 16 bits


def tokenize_file(text_path, bin_path, tokenizer: Tokenizer, *, threads: int = 2, chunk_chars: int = CHUNK_CHARS,
                  progress: bool | None = None) -> int:
    """Write the tokens of a text file to bin_path as uint16; returns the token count."""
    from tqdm import tqdm

    text_path = Path(text_path)
    total_bytes = text_path.stat().st_size
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"tokenize {text_path.name}",
               disable=not sys.stderr.isatty() if progress is None else not progress)
    count = 0
    with atomic_path(bin_path) as tmp, open(tmp, "wb") as out:
        batch: list[str] = []

        def flush():
            nonlocal count
            for ids in tokenizer.encode_batch(batch, num_threads=threads):
                np.asarray(ids, dtype=TOKEN_DTYPE).tofile(out)
                count += len(ids)
            bar.update(sum(len(chunk.encode("utf-8")) for chunk in batch))
            batch.clear()

        for chunk in iter_safe_chunks(text_path, chunk_chars):
            batch.append(chunk)
            if len(batch) == 4 * threads:
                flush()
        flush()
        out.flush()
    bar.close()
    return count


def tokenize_splits(prepared_dir, out_dir, threads: int | None = None, progress: bool | None = None) -> dict:
    """prepared_dir/{train,val}.txt -> out_dir/{train,val}.bin + meta.json (counts, vocabulary, checksums),
    on `threads` cores (all physical ones by default)."""
    prepared_dir, out_dir = Path(prepared_dir), Path(out_dir)
    threads = threads or physical_cores()
    tokenizer = Tokenizer()
    meta = {"tokenizer": "gpt2", "n_vocab": tokenizer.n_vocab, "eot_id": tokenizer.eot_id,
            "dtype": np.dtype(TOKEN_DTYPE).name, "splits": {}}
    for split in ("train", "val"):
        text_path = prepared_dir / f"{split}.txt"
        if not text_path.is_file():
            raise CorpusError(f"{text_path} is missing; run the prepare stage first")
        tokens = tokenize_file(text_path, out_dir / f"{split}.bin", tokenizer, threads=threads, progress=progress)
        meta["splits"][split] = {"tokens": tokens, "source_sha256": sha256_file(text_path),
                                 "sha256": sha256_file(out_dir / f"{split}.bin")}
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2))
    return meta


def load_tokens(path) -> np.ndarray:
    """The token file memory-mapped, read-only: nothing is loaded until sliced."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"token file {path} not found; run the tokenize stage first")
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r").view(np.ndarray)  # a view's slices cost less (shards)
