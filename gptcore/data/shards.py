"""Documents -> token shards (GPT-2 and build-nanogpt's layout), and the shards read as one token stream.

Each document's tokens (tiktoken's encode_ordinary: a literal "<|endoftext|>" in a text stays text) are
followed by <|endoftext|>. Held-out documents validate (gptcore.data.documents.is_validation_document: every
1 / (1 - data.train_ratio)-th, spread over the whole source), never a cut through a document.

A shard is a HEADER_BYTES header (a magic line, then JSON: format, dtype, tokens, tokenizer, the source's sha256,
split, index) and `tokens` uint16 ids. Shards are filled one after another to shard_tokens ids each (the last of
a split shorter): a document may continue in the next shard, exactly as it would continue in one file.

Worker processes encode the work items (gptcore.data.documents) while this process reads the source and writes,
with a bounded number of items in flight, so memory stays flat however large the source. The workers start
under any multiprocessing start method (spawn on macOS and Windows): they get their reader by pickling and load
the vocabulary themselves. Progress is saved at each finished shard; a killed tokenize continues from there to
the same shards.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..atomic import atomic_write_text
from ..errors import GptcoreError
from ..machine import physical_cores
from ..model.tokenizer import Tokenizer
from .corpus import CorpusError, sha256_file
from .documents import MANIFEST, DocumentReader, held_out_share, is_validation_document, validation_documents
from .token_files import TOKEN_DTYPE, load_tokens

HEADER_BYTES = 1024
MAGIC = b"gptcore token shard\n"
SHARD_FORMAT = 1
TOKENIZER = "gpt2"
PROGRESS = "progress.json"
SPLITS = ("train", "val")


class ShardError(GptcoreError, ValueError):
    """A token shard gptcore cannot read: not a shard, an older format, another tokenizer, cut short."""


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


def shard_header(fields: dict) -> bytes:
    body = MAGIC + json.dumps(fields, sort_keys=True).encode()
    return body + b" " * (HEADER_BYTES - 1 - len(body)) + b"\n"


def read_header(path: Path) -> dict:
    """A shard's header, checked: gptcore's format, GPT-2's tokenizer, the file as long as its count says."""
    with open(path, "rb") as handle:
        head = handle.read(HEADER_BYTES)
    if not head.startswith(MAGIC):
        raise ShardError(f"{path} is not a gptcore token shard (no header); run the tokenize stage again")
    fields = json.loads(head[len(MAGIC):])
    if fields.get("format") != SHARD_FORMAT:
        raise ShardError(f"{path} is a shard of format {fields.get('format')}, this gptcore reads format "
                         f"{SHARD_FORMAT}; run the tokenize stage again")
    if fields.get("tokenizer") != TOKENIZER or fields.get("dtype") != np.dtype(TOKEN_DTYPE).name:
        raise ShardError(f"{path} holds {fields.get('dtype')} ids of tokenizer {fields.get('tokenizer')!r}, gptcore "
                         f"trains on {np.dtype(TOKEN_DTYPE).name} ids of {TOKENIZER!r}; tokenize the source again")
    expected = HEADER_BYTES + fields["tokens"] * np.dtype(TOKEN_DTYPE).itemsize
    if path.stat().st_size != expected:
        raise ShardError(f"{path} is {path.stat().st_size} bytes, its header says {expected}: it was cut short; run "
                         f"the tokenize stage again")
    return fields


class ShardedTokens:
    """A split's shards as one read-only token sequence: len() and slices, each shard memory-mapped, a slice
    across a boundary joined from both (what one file of all the tokens would give)."""

    def __init__(self, paths: list[Path]):
        # plain ndarray views of the maps: a memmap's slice costs a microsecond of bookkeeping, a view's a fifth
        self.shards = [np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES,
                                 shape=(read_header(path)["tokens"],)).view(np.ndarray) for path in paths]
        self.bounds = np.cumsum([0] + [len(shard) for shard in self.shards])  # for the vectorised windows
        self.starts = self.bounds.tolist()  # the same, for bisect on one slice
        self.window_views = {}  # window length -> each shard's strided view of all its windows

    def __len__(self):
        return self.starts[-1]

    def __getitem__(self, window: slice):
        start, stop = window.start, window.stop
        if window.step not in (None, 1) or start is None or stop is None or start < 0 or stop < 0:
            if not isinstance(window, slice) or window.step not in (None, 1):
                raise TypeError("ShardedTokens takes contiguous slices")
            start, stop, _ = window.indices(len(self))
        stop = min(stop, self.starts[-1])
        if start >= stop:
            return np.zeros(0, dtype=TOKEN_DTYPE)
        shard = bisect.bisect_right(self.starts, start) - 1
        first = self.starts[shard]
        if stop <= self.starts[shard + 1]:  # within one shard, as all but a few windows are: a view, no copy
            return self.shards[shard][start - first:stop - first]
        pieces = []
        while start < stop:
            take = min(stop, self.starts[shard + 1]) - start
            pieces.append(self.shards[shard][start - self.starts[shard]:start - self.starts[shard] + take])
            start, shard = start + take, shard + 1
        return np.concatenate(pieces)

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """Rows tokens[s:s + length] for each start: one gather per shard from its windows' strided view, a join
        for the windows across a boundary."""
        if length not in self.window_views:
            self.window_views[length] = [sliding_window_view(shard, length) if len(shard) >= length else None
                                         for shard in self.shards]
        views = self.window_views[length]
        rows = np.empty((len(starts), length), dtype=TOKEN_DTYPE)
        shard = np.searchsorted(self.bounds, starts, "right") - 1
        local = starts - self.bounds[shard]
        inside = local + length <= self.bounds[shard + 1] - self.bounds[shard]
        order = np.argsort(np.where(inside, shard, -1), kind="stable")
        counts = np.bincount(shard[inside], minlength=len(self.shards)).tolist()
        taken = int(len(starts) - inside.sum())
        for row in order[:taken].tolist():  # across a boundary
            rows[row] = self[int(starts[row]):int(starts[row]) + length]
        for index, count in enumerate(counts):
            if count:
                chosen = order[taken:taken + count]
                rows[chosen] = views[index][local[chosen]]
                taken += count
        return rows


def write_shards(tokens: np.ndarray, folder: Path, split: str, count: int) -> list[Path]:
    """A token array cut into `count` shards of about equal size in folder, with a header read_header accepts (for
    tokens made otherwise: benchmarks, tests); their paths."""
    paths = []
    for index, part in enumerate(np.array_split(np.asarray(tokens, dtype=TOKEN_DTYPE), count)):
        paths.append(Path(folder) / shard_name(split, index))
        with open(paths[-1], "wb") as handle:
            handle.write(shard_header({"format": SHARD_FORMAT, "dtype": np.dtype(TOKEN_DTYPE).name,
                                       "tokenizer": TOKENIZER, "tokens": len(part), "split": split, "index": index}))
            part.tofile(handle)
    return paths


def split_shards(tokens_dir: Path, split: str) -> list[Path]:
    return sorted(Path(tokens_dir).glob(f"{split}_[0-9]*.bin"))


def load_split(tokens_dir, split: str):
    """A split's tokens: the book layout's {split}.bin memory-mapped, or its shards as one ShardedTokens."""
    shards = split_shards(tokens_dir, split)
    return ShardedTokens(shards) if shards else load_tokens(Path(tokens_dir) / f"{split}.bin")


class ShardWriter:
    """Appends a split's tokens to its partial shard (a header's room, then ids), which becomes shard n at
    shard_tokens ids; restarts from a saved (shards, partial) state by cutting the partial file back to it.

    A kill after a shard was finished but before the state was saved leaves that shard, whose first ids are the
    saved partial ones: it becomes the partial file again (and any later shard goes)."""

    def __init__(self, folder: Path, split: str, shard_tokens: int, header: dict, shards: int = 0, partial: int = 0):
        self.folder, self.split, self.shard_tokens, self.header = folder, split, shard_tokens, header
        self.shards, self.partial, self.finished_shard = shards, partial, False
        self.partial_path = folder / f"{split}.partial"
        unsaved = [path for path in split_shards(folder, split) if int(path.stem.rsplit("_", 1)[1]) >= shards]
        if unsaved:
            os.replace(unsaved[0], self.partial_path)
            for path in unsaved[1:]:
                path.unlink()
        with open(self.partial_path, "ab") as handle:
            handle.truncate(HEADER_BYTES + partial * np.dtype(TOKEN_DTYPE).itemsize)
        self.handle = open(self.partial_path, "r+b")
        self.handle.seek(0, os.SEEK_END)

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            take = min(len(tokens), self.shard_tokens - self.partial)
            tokens[:take].tofile(self.handle)
            self.partial, tokens = self.partial + take, tokens[take:]
            if self.partial == self.shard_tokens:
                self.close_shard()

    def close_shard(self) -> None:
        """The partial file, its header written, becomes the next shard (fsynced, then renamed)."""
        self.handle.seek(0)
        self.handle.write(shard_header(self.header | {"tokens": self.partial, "split": self.split,
                                                      "index": self.shards}))
        self.sync()
        self.handle.close()
        os.replace(self.partial_path, self.folder / shard_name(self.split, self.shards))
        self.shards, self.partial, self.finished_shard = self.shards + 1, 0, True
        self.handle = open(self.partial_path, "w+b")
        self.handle.truncate(HEADER_BYTES)
        self.handle.seek(HEADER_BYTES)

    def sync(self) -> None:
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def finish(self) -> None:
        if self.partial or not self.shards:
            self.close_shard()
        self.handle.close()
        self.partial_path.unlink()


# the state of a worker process, set once by start_worker
worker_reader: DocumentReader | None = None
worker_encoding = None


def start_worker(reader: DocumentReader) -> None:
    global worker_reader, worker_encoding
    worker_reader, worker_encoding = reader, Tokenizer().encoding
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()


def exit_with_parent(parent: int) -> None:
    """A worker whose tokenize process was killed exits (it would wait for work forever, holding its memory)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def encode_item(item) -> tuple[np.ndarray, list[int], bool]:
    """(the item's tokens, each text's token count, whether its last text ends a document); <|endoftext|> after
    each whole document. (Bad lines or rows skipped were counted by the prepare stage.)"""
    texts, ends, _ = worker_reader.item_documents(item)
    pieces = [worker_encoding.encode_ordinary(text) for text in texts]
    for index, ids in enumerate(pieces):
        if ends or index < len(pieces) - 1:
            ids.append(worker_encoding.eot_token)
    lengths = [len(ids) for ids in pieces]
    tokens = np.fromiter((i for ids in pieces for i in ids), dtype=TOKEN_DTYPE, count=sum(lengths))
    return tokens, lengths, ends


def ordered_results(pool: ProcessPoolExecutor, items, window: int):
    """pool's encode_item of each item, in order, with at most `window` items read ahead (Pool.imap would read
    the whole source into its queue; a worker that dies raises here instead of hanging as in Pool)."""
    pending = deque()
    for item in items:
        pending.append(pool.submit(encode_item, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def tokenize_documents(prepared_dir, out_dir, work_dir, *, workers: int | None = None, start_method: str | None = None,
                       progress: bool | None = None) -> dict:
    """prepared_dir/documents.json (the prepare stage's manifest) -> out_dir/{train,val}_NNNNNN.bin + meta.json,
    on `workers` processes (all physical cores by default). Shards are made in work_dir/<source digest> and moved
    to out_dir at the end; a run stopped or killed before continues there after its last finished shard."""
    from tqdm import tqdm

    manifest = json.loads((Path(prepared_dir) / MANIFEST).read_text())
    paths = [Path(source["path"]) for source in manifest["sources"]]
    for path, source in zip(paths, manifest["sources"]):  # size and time, as DVC checks its files: no second read
        if not path.is_file() or [path.stat().st_size, path.stat().st_mtime_ns] != [source["bytes"],
                                                                                  source["mtime_ns"]]:
            raise CorpusError(f"{path} (of data.source) is gone or changed since the prepare stage; run it again")
    reader = DocumentReader(manifest["kind"], manifest["text_field"], manifest["skip_bad_lines"])
    tokenizer = Tokenizer()
    header = {"format": SHARD_FORMAT, "dtype": np.dtype(TOKEN_DTYPE).name, "tokenizer": TOKENIZER,
              "n_vocab": tokenizer.n_vocab, "eot_id": tokenizer.eot_id, "source_sha256": manifest["source_sha256"]}
    # the manifest names the sources' sums and every setting the shards depend on: its digest keys the work
    work = Path(work_dir) / hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    state = json.loads((work / PROGRESS).read_text()) if (work / PROGRESS).is_file() else \
        {"items": 0, "documents": 0} | {split: {"shards": 0, "partial": 0} for split in SPLITS}
    work.mkdir(parents=True, exist_ok=True)
    writers = {split: ShardWriter(work, split, manifest["shard_tokens"], header, **state[split]) for split in SPLITS}
    workers, held_out = workers or physical_cores(), held_out_share(manifest["train_ratio"])
    if state["items"]:
        print(f"tokenize: continuing after {sum(state[s]['shards'] for s in SPLITS)} finished shard(s) ({work})",
              file=sys.stderr)
    bar = tqdm(total=manifest["documents"], initial=state["documents"], unit="doc", desc="tokenize",
               disable=not sys.stderr.isatty() if progress is None else not progress)
    items = reader.work_items(paths)
    for _ in range(state["items"]):
        next(items)
    with ProcessPoolExecutor(workers, multiprocessing.get_context(start_method), initializer=start_worker,
                             initargs=(reader,)) as pool:
        for tokens, lengths, ends in ordered_results(pool, items, 2 * workers):
            offset, documents = 0, state["documents"]
            for index, length in enumerate(lengths):
                split = "val" if is_validation_document(documents, held_out) else "train"
                writers[split].write(tokens[offset:offset + length])
                offset += length
                documents += ends or index < len(lengths) - 1
            bar.update(documents - state["documents"])
            state |= {"items": state["items"] + 1, "documents": documents}
            if any(writer.finished_shard for writer in writers.values()):
                save_progress(work, state, writers)
    bar.close()
    for writer in writers.values():
        writer.finish()
    return move_shards(work, Path(out_dir), header, manifest)


def save_progress(work: Path, state: dict, writers: dict) -> None:
    """The state after a whole work item: the items and documents done, and each split's shards and partial ids,
    the partial files synced first so they hold at least what the state says."""
    for split, writer in writers.items():
        writer.sync()
        writer.finished_shard = False
        state[split] = {"shards": writer.shards, "partial": writer.partial}
    atomic_write_text(work / PROGRESS, json.dumps(state))


def move_shards(work: Path, out_dir: Path, header: dict, manifest: dict) -> dict:
    """The finished shards into out_dir, with meta.json (counts, documents, checksums); work removed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {key: header[key] for key in ("tokenizer", "n_vocab", "eot_id", "dtype")} | \
        {"layout": "shards", "shard_tokens": manifest["shard_tokens"], "source_sha256": manifest["source_sha256"],
         "splits": {}}
    for split in SPLITS:
        shards = sorted(work.glob(f"{split}_[0-9]*.bin"))
        digests = []
        for shard in shards:
            os.replace(shard, out_dir / shard.name)
            digests.append(sha256_file(out_dir / shard.name))
        meta["splits"][split] = {"tokens": len(ShardedTokens(split_shards(out_dir, split))), "shards": len(shards),
                                 "sha256": hashlib.sha256("".join(digests).encode()).hexdigest()}
    meta["splits"]["val"]["documents"] = validation_documents(manifest["documents"], manifest["train_ratio"])
    meta["splits"]["train"]["documents"] = manifest["documents"] - meta["splits"]["val"]["documents"]
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2))
    shutil.rmtree(work)
    return meta

