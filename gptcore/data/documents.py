"""Document sources: JSONL and Parquet files with a text field, or text files read one file one document.

A source is read in pieces that never hold a whole file: JSONL in blocks of lines, Parquet in record batches
of the text column (pyarrow), text in chunks. The prepare stage checks every document once (check_documents:
the field, JSON, UTF-8, the count) so that bad input stops before any tokenizing; the tokenize stage reads the
same pieces again (work_items) and hands them to worker processes (gptcore.data.shards).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from ..atomic import atomic_write_text
from ..settings.data import DataConfig
from .corpus import (CorpusError, iter_safe_chunks, iter_text, prepare_corpus, resolve_sources,
                     sha256_file)

DOCUMENT_SUFFIXES = {".jsonl": "jsonl", ".parquet": "parquet", ".txt": "text"}
ITEM_BYTES = 1 << 20  # JSONL bytes per work item, cut at a line end
PARQUET_ROWS = 1024  # Parquet rows per work item
TEXT_CHUNK_CHARS = 1 << 20  # a text file's characters per work item
MANIFEST = "documents.json"  # the prepare stage's output in the shards layout


def held_out_share(train_ratio: float) -> Fraction:
    """1 - train_ratio, exactly as written (0.9 gives 1/10, not 0.09999999999999998)."""
    return 1 - Fraction(repr(train_ratio))


def is_validation_document(index: int, share: Fraction) -> bool:
    """Document `index` (0-based, in source order) is held out when floor((d + 1) h) > floor(d h), h the held-out
    share: every 1/h-th document, spread over the whole source."""
    return (index + 1) * share.numerator // share.denominator > index * share.numerator // share.denominator


def validation_documents(documents: int, train_ratio: float) -> int:
    """How many of the first `documents` are held out: the steps of is_validation_document add up to floor(n h)."""
    share = held_out_share(train_ratio)
    return documents * share.numerator // share.denominator


def source_kind(paths: list[Path]) -> str:
    """jsonl, parquet or text: the one kind of all the source's files, known by their suffix."""
    kinds = {DOCUMENT_SUFFIXES.get(path.suffix.lower(), "text") for path in paths}
    if len(kinds) > 1:
        raise CorpusError(f"data.source mixes {' and '.join(sorted(kinds))} files ({paths[0]}, ...); give files of "
                          f"one kind")
    return kinds.pop()


@dataclass(frozen=True)
class DocumentReader:
    """How documents are read from a source's files: the kind, the text field, what a bad JSONL line does."""
    kind: str
    text_field: str = "text"
    skip_bad_lines: bool = False

    def line_text(self, line: bytes, origin: str) -> str | bool:
        """The text of a JSONL line; False for a blank line, True for a bad one when skipping (else it raises)."""
        if not line.strip():
            return False
        try:
            record = json.loads(line)
        except ValueError as error:
            problem = f"{origin} is not JSON ({error})"
        else:
            if not isinstance(record, dict):
                problem = f"{origin} is a JSON {type(record).__name__}, not an object with a {self.text_field!r} field"
            elif not isinstance(text := record.get(self.text_field), str):
                problem = (f"{origin} has no text field {self.text_field!r} (its fields: {', '.join(record) or 'none'})"
                           if self.text_field not in record else
                           f"{origin}: field {self.text_field!r} is {type(text).__name__}, not a string")
            else:
                return text
        if self.skip_bad_lines:
            return True
        raise CorpusError(f"{problem}; fix the line, set data.text_field, or set data.skip_bad_lines true to skip "
                          f"such lines with a counted warning")

    def jsonl_blocks(self, path: Path):
        """(first line number, bytes of whole lines) blocks of about ITEM_BYTES: a work item."""
        with open(path, "rb") as handle:
            first, lines, size = 1, [], 0
            for line in handle:
                lines.append(line)
                size += len(line)
                if size >= ITEM_BYTES:
                    yield first, b"".join(lines)
                    first, lines, size = first + len(lines), [], 0
            if lines:
                yield first, b"".join(lines)

    def block_texts(self, path: Path, first_line: int, block: bytes) -> tuple[list[str], int]:
        """The documents of a JSONL block and the count of bad lines skipped (or the first raised)."""
        texts, skipped = [], 0
        for number, line in enumerate(block.split(b"\n"), first_line):
            try:
                text = self.line_text(line, f"{path}:{number}")
            except UnicodeDecodeError as error:  # json.loads of bytes decodes them first
                raise CorpusError(f"{path}:{number} is not valid UTF-8 ({error.reason}); convert it to UTF-8") \
                    from error
            if isinstance(text, str):
                texts.append(text)
            else:
                skipped += text
        return texts, skipped

    def parquet_batches(self, path: Path):
        """Lists of the text column's values, PARQUET_ROWS rows at a time; a file without the field is an error
        naming the fields it has."""
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(path)
        except Exception as error:  # pyarrow's ArrowInvalid and OSError: not a Parquet file
            raise CorpusError(f"{path} cannot be read as Parquet ({error}); give a Parquet file") from error
        names = parquet.schema_arrow.names
        if self.text_field not in names:
            raise CorpusError(f"{path} has no column {self.text_field!r} (its columns: {', '.join(names)}); set "
                              f"data.text_field to the one holding the text")
        for batch in parquet.iter_batches(batch_size=PARQUET_ROWS, columns=[self.text_field]):
            yield batch.column(0).to_pylist()

    def parquet_texts(self, path: Path, first_row: int, values: list) -> tuple[list[str], int]:
        """The documents of a batch of rows and the count of rows skipped (a null text), or the first raised."""
        texts = [value for value in values if isinstance(value, str)]
        if len(texts) < len(values) and not self.skip_bad_lines:
            index = next(i for i, value in enumerate(values) if not isinstance(value, str))
            raise CorpusError(f"{path} row {first_row + index}: {self.text_field!r} is {values[index]!r}, not a "
                              f"string; set data.skip_bad_lines true to skip such rows with a counted warning")
        return texts, len(values) - len(texts)

    def work_items(self, paths: list[Path]):
        """The source as work items, in a fixed order (a resumed tokenize skips a count of them): each a
        (kind, payload, origin) that encode_item turns into documents; text files yield chunks, the last of a
        file marked as ending its document."""
        for path in paths:
            if self.kind == "jsonl":
                for first, block in self.jsonl_blocks(path):
                    yield ("jsonl", (first, block), str(path))
            elif self.kind == "parquet":
                row = 0
                for values in self.parquet_batches(path):
                    yield ("parquet", (row, values), str(path))
                    row += len(values)
            else:
                chunks = iter_safe_chunks(path, TEXT_CHUNK_CHARS)  # cut where the tokens do not change
                previous = next(chunks, "")
                for chunk in chunks:
                    yield ("text", (previous, False), str(path))
                    previous = chunk
                yield ("text", (previous, True), str(path))

    def item_documents(self, item) -> tuple[list[str], bool, int]:
        """(the texts of a work item, whether its last text ends a document, the bad lines or rows skipped): JSONL
        and Parquet texts are whole documents; a text chunk ends one only when it is its file's last."""
        kind, payload, origin = item
        if kind in ("jsonl", "parquet"):
            texts, skipped = (self.block_texts if kind == "jsonl" else self.parquet_texts)(Path(origin), *payload)
            return texts, True, skipped
        text, ends = payload
        return [text], ends, 0


def check_documents(reader: DocumentReader, paths: list[Path]) -> dict:
    """Read every document once, before any compute: count them per file, and the skipped lines or rows;
    raises on the first bad one (unless skipping) and when there are no documents at all."""
    counts = []
    for path in paths:
        documents = skipped = 0
        if reader.kind == "text":
            documents = 1
            for _ in iter_text(path):  # UTF-8 checked throughout
                pass
        else:
            for item in reader.work_items([path]):
                texts, _, bad = reader.item_documents(item)
                documents, skipped = documents + len(texts), skipped + bad
        counts.append({"path": str(path), "documents": documents, "skipped": skipped})
    total, skipped = sum(c["documents"] for c in counts), sum(c["skipped"] for c in counts)
    if total == 0:
        raise CorpusError(f"data.source ({paths[0]}{', ...' if len(paths) > 1 else ''}) holds no documents"
                          f"{f' ({skipped} bad lines or rows skipped)' if skipped else ''}; give a source with text")
    if skipped:
        print(f"warning: skipped {skipped} bad line(s) or row(s) of data.source (data.skip_bad_lines is true)",
              file=sys.stderr)
    return {"files": counts, "documents": total, "skipped": skipped}


def prepare_data(data: DataConfig, out_dir) -> dict:
    """The prepare stage: fetch or find the source and verify it; in the book layout split its text into
    out_dir/{train,val}.txt (prepare_corpus), in the shards layout check its documents and write their manifest
    (prepare_documents)."""
    paths = resolve_sources(data.source, data.sha256)
    kind = source_kind(paths)
    shutil.rmtree(out_dir, ignore_errors=True)  # no file of the other layout may stay (tokenize reads the manifest)
    layout = data.layout if data.layout != "auto" else "book" if kind == "text" else "shards"
    if layout == "book":
        if kind != "text":
            raise CorpusError(f"data.layout book splits text files by characters; a {kind} source needs "
                              f"data.layout shards (or auto)")
        return prepare_corpus(paths, out_dir, data.train_ratio)
    return prepare_documents(DocumentReader(kind, data.text_field, data.skip_bad_lines), paths, data, out_dir)


def prepare_documents(reader: DocumentReader, paths: list[Path], data: DataConfig, out_dir) -> dict:
    """out_dir/documents.json: the files with their sums and document counts, and the settings the tokenize stage
    shards them with; every document read once first (check_documents)."""
    counted = check_documents(reader, paths)
    held_out = validation_documents(counted["documents"], data.train_ratio)
    if held_out == 0:
        raise CorpusError(f"data.train_ratio {data.train_ratio} holds out no document of the "
                          f"{counted['documents']} (every {1 / (1 - data.train_ratio):.3g}th is held out); lower "
                          f"data.train_ratio or add documents")
    sources = [{"path": str(path.resolve()), "sha256": sha256_file(path), "bytes": path.stat().st_size,
                "mtime_ns": path.stat().st_mtime_ns} | count
               for path, count in zip(paths, counted["files"])]
    manifest = {"layout": "shards", "kind": reader.kind, "text_field": reader.text_field,
                "skip_bad_lines": reader.skip_bad_lines, "train_ratio": data.train_ratio,
                "shard_tokens": data.shard_tokens, "documents": counted["documents"], "skipped": counted["skipped"],
                "source_sha256": hashlib.sha256("".join(s["sha256"] for s in sources).encode()).hexdigest(),
                "sources": sources}
    atomic_write_text(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return manifest
