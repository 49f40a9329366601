"""Corpus sources (file, folder, glob, URL with sha256), offline mirror, and the train/validation split.

Text is read as UTF-8 in chunks, so a corpus larger than RAM streams through: a leading BOM is
dropped and CRLF / CR line endings become LF (Python's universal newlines), so the same text gives
the same tokens whichever platform wrote it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import urllib.parse
import urllib.request
from pathlib import Path

from ..atomic import atomic_path, atomic_write_text
from ..errors import GptcoreError
from ..model.tokenizer import EOT_TOKEN

CHUNK_CHARS = 1 << 20  # text read at a time
BLOCK_BYTES = 1 << 20  # bytes read at a time (checksums, downloads)
SAFE_CUT_SEARCH = 1 << 16  # how far back from a chunk end to look for a safe cut
SOURCE_SUFFIXES = (".txt", ".jsonl", ".parquet")  # the files a folder source is read for


class CorpusError(GptcoreError, ValueError):
    """A corpus that cannot be used; the message names the source and what to do."""


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(BLOCK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("GPTCORE_CACHE", Path.home() / ".cache" / "gptcore"))


def verify_checksum(path: Path, expected: str, origin: str, key: str) -> None:
    """path's sha256 must be `expected`, the value of the setting `key`: a mismatch names both."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise CorpusError(f"checksum mismatch for {origin}: expected sha256 {expected} ({key}), got {actual} (file "
                          f"{path}); fix {key} or the source")


def fetch_url(url: str, sha256: str | None, key: str, cache_dir: Path | None = None) -> Path:
    """A verified local copy of url (its sum the setting `key`): from $GPTCORE_MIRROR/data, else the download
    cache, else the network."""
    if not sha256:
        raise CorpusError(f"a URL source needs its expected sha256 ({key}) to be verified: {url}")
    name = Path(urllib.parse.urlparse(url).path).name or "corpus.txt"
    mirror = os.environ.get("GPTCORE_MIRROR")
    if mirror and (path := mirror_copy(Path(mirror) / "data", name, sha256)):
        verify_checksum(path, sha256, f"{url} (the mirror's copy)", key)
        return path
    cached = (cache_dir or default_cache_dir()) / sha256.lower() / name
    if cached.is_file():
        verify_checksum(cached, sha256, f"{url} (cached copy)", key)
        return cached
    try:
        with atomic_path(cached) as tmp:
            with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
                for block in iter(lambda: response.read(BLOCK_BYTES), b""):
                    out.write(block)
            verify_checksum(tmp, sha256, url, key)
    except OSError as error:
        raise CorpusError(f"cannot download {url} ({error}); for offline use set GPTCORE_MIRROR to a folder "
                          f"holding data/{name}") from error
    return cached


def locate_file(source: str, sha256: str | None, key: str, kinds: str, sha256_key: str) -> Path:
    """The local, verified file of a one-file source (`key` names its setting, e.g. classify.source, and
    `sha256_key` its checksum's): a URL through fetch_url, or a file, checked against sha256 when one is given."""
    if source.startswith(("http://", "https://")):
        return fetch_url(source, sha256, sha256_key)
    path = Path(source).expanduser()
    if not path.is_file():
        raise CorpusError(f"{key} {source!r} is not a file; give a {kinds} file or an http(s) URL")
    if sha256:
        verify_checksum(path, sha256, str(path), sha256_key)
    return path


def mirror_copy(folder: Path, name: str, sha256: str) -> Path | None:
    """The mirror's copy of a download: by file name, else the file its SHA256SUMS lists with this checksum,
    else a file of that name with a suffix (a zip's member `x` kept as x.tsv), whose sum the caller verifies: a
    wrong sum is then said to be the mirror's copy's, not a download to make."""
    if (folder / name).is_file():
        return folder / name
    sums = folder / "SHA256SUMS"
    if sums.is_file():
        for line in sums.read_text().splitlines():
            digest, _, listed = line.partition("  ")
            if digest.lower() == sha256.lower() and (folder / listed.strip()).is_file():
                return folder / listed.strip()
    return next((path for path in sorted(folder.glob(f"{glob.escape(name)}.*")) if path.is_file()), None)


def resolve_sources(source: str, sha256: str | None = None, cache_dir: Path | None = None) -> list[Path]:
    """The files of a source: an http(s) URL, a file, a folder (its .txt, .jsonl or .parquet files, sorted) or a
    glob."""
    if source.startswith(("http://", "https://")):
        return [fetch_url(source, sha256, "data.sha256", cache_dir)]
    path = Path(source).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SOURCE_SUFFIXES)
        if not files:
            raise CorpusError(f"folder {path} holds no {', '.join(SOURCE_SUFFIXES)} files")
    elif glob.has_magic(source):
        files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not files:
            raise CorpusError(f"glob {source!r} matches no files")
    else:
        raise CorpusError(f"corpus source {source!r} does not exist; give a file, a folder of .txt files, "
                          f"a glob or an http(s) URL")
    if sha256 and len(files) == 1:
        verify_checksum(files[0], sha256, str(files[0]), "data.sha256")
    return files


def iter_text(path: Path, chunk_chars: int = CHUNK_CHARS):
    """Yield the file's text in chunks (BOM dropped, line endings normalised); bad UTF-8 is an error."""
    with open(path, "rb") as probe:
        if b"\x00" in probe.read(8192):
            raise CorpusError(f"{path} looks binary (it contains NUL bytes); give a UTF-8 text file")
    try:
        with open(path, encoding="utf-8-sig", newline=None) as handle:
            for chunk in iter(lambda: handle.read(chunk_chars), ""):
                yield chunk
    except UnicodeDecodeError as error:
        raise CorpusError(f"{path} is not valid UTF-8 (byte {error.start} of a block: {error.reason}); "
                          f"convert it to UTF-8") from error


def safe_cut(text: str) -> int:
    """An index to cut text at without changing its GPT-2 tokens; len(text) when none is found."""
    low = max(1, len(text) - SAFE_CUT_SEARCH)
    position = text.rfind("\n", low, len(text) - 1)
    while position > 0:
        if not text[position - 1].isspace() and not text[position + 1].isspace():
            return position + 1
        position = text.rfind("\n", low, position)
    return len(text)


def iter_safe_chunks(path: Path, chunk_chars: int):
    """Chunks of the file whose tokenizations concatenate to the whole file's."""
    carry = ""
    for block in iter_text(path, chunk_chars):
        text = carry + block
        cut = safe_cut(text)
        if cut == len(text) and len(text) < 4 * chunk_chars:
            carry = text  # no safe cut yet: keep reading (bounded, then cut anyway)
            continue
        carry = text[cut:]
        yield text[:cut]
    if carry:
        yield carry


def measure_text(path: Path) -> tuple[int, bool]:
    """(characters, whether any is not whitespace) of a text file."""
    chars, has_content = 0, False
    for chunk in iter_text(path):
        chars += len(chunk)
        has_content = has_content or not chunk.isspace()
    return chars, has_content


def iter_documents_joined(paths: list[Path]):
    """Chunks of all documents joined by <|endoftext|>, the GPT-2 document separator."""
    for index, path in enumerate(paths):
        if index:
            yield EOT_TOKEN
        yield from iter_text(path)


def prepare_corpus(paths: list[Path], out_dir, train_ratio: float = 0.9) -> dict:
    """Split the joined documents by characters into out_dir/train.txt and val.txt, plus checksums.json.

    Streams: memory stays at one chunk whatever the corpus size.
    """
    if not 0.0 < train_ratio < 1.0:
        raise CorpusError(f"train_ratio must be in (0, 1), got {train_ratio!r}")
    out_dir = Path(out_dir)
    measured = [measure_text(path) for path in paths]
    if not any(has_content for _, has_content in measured):
        names = ", ".join(str(p) for p in paths[:3])
        raise CorpusError(f"corpus {names} is empty or whitespace only; give a text with content")
    sizes = [chars for chars, _ in measured]
    total = sum(sizes) + len(EOT_TOKEN) * (len(paths) - 1)
    split_at = int(total * train_ratio)
    written = train_chars = 0
    with atomic_path(out_dir / "train.txt") as train_tmp, atomic_path(out_dir / "val.txt") as val_tmp:
        with open(train_tmp, "w", encoding="utf-8", newline="\n") as train, \
                open(val_tmp, "w", encoding="utf-8", newline="\n") as val:
            for chunk in iter_documents_joined(paths):
                head = max(0, min(len(chunk), split_at - written))
                if chunk == EOT_TOKEN:  # a separator never straddles the split
                    head = len(chunk) if head else 0
                train.write(chunk[:head])
                val.write(chunk[head:])
                written += len(chunk)
                train_chars += head
    summary = {
        "sources": [{"path": str(p), "sha256": sha256_file(p), "chars": n} for p, n in zip(paths, sizes)],
        "train_ratio": train_ratio,
        "splits": {name: {"chars": chars, "sha256": sha256_file(out_dir / f"{name}.txt")}
                   for name, chars in (("train", train_chars), ("val", total - train_chars))},
    }
    atomic_write_text(out_dir / "checksums.json", json.dumps(summary, indent=2))
    return summary
