"""Labelled texts for classification (the prepare-labelled stage): fetch and verify the table, check every
row, balance the classes and split, as the book's chapter 6 does it with pandas.

The book's steps, with classify.seed as random_state: each class but the rarest is sampled down to the
rarest one's count (`sample(n, random_state=seed)`), the classes are concatenated in label order, mapped
to their index in classify.labels, shuffled (`sample(frac=1, random_state=seed)`) and cut into
int(n * train_ratio) training rows, int(n * val_ratio) validation rows and the rest for testing.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import urllib.request
import zipfile
from pathlib import Path

import pandas as pd

from ..atomic import atomic_path, atomic_write_text
from ..settings.classify import ClassifyConfig
from .corpus import BLOCK_BYTES, CorpusError, default_cache_dir, locate_file, mirror_copy, sha256_file, verify_checksum

SPLITS = ("train", "validation", "test")
# Lines that an unclosed quote turned into the text of one row may make up at most this share of the rows read:
# the book's own file has 2 of 5,572 (0.04 %, one text, kept as pandas and the book read it: a warning); above
# 0.5 % the rows lost could move a 10 % test split of the book's size (150 rows) by more than one row's share of
# its accuracy, so the table is refused.
SWALLOWED_SHARE = 0.005


def fetch_member(source: str, member: str, sha256: str | None, cache_dir: Path | None = None) -> Path:
    """The table inside a zip (a URL or a file): the mirror's copy by checksum, else the download cache,
    else the zip downloaded or opened and its member extracted; its sha256 verified either way."""
    origin = f"{source} (member {member})"
    mirror = os.environ.get("GPTCORE_MIRROR")
    if sha256 and mirror and (path := mirror_copy(Path(mirror) / "data", member, sha256)):
        verify_checksum(path, sha256, f"{origin}, the mirror's copy", "classify.sha256")
        return path
    cached = (cache_dir or default_cache_dir()) / (sha256 or "unverified").lower() / member
    if sha256 and cached.is_file():
        verify_checksum(cached, sha256, f"{origin}, cached copy", "classify.sha256")
        return cached
    with atomic_path(cached.with_suffix(".zip")) as archive:
        if source.startswith(("http://", "https://")):
            try:
                with urllib.request.urlopen(source, timeout=60) as response, open(archive, "wb") as out:
                    for block in iter(lambda: response.read(BLOCK_BYTES), b""):
                        out.write(block)
            except OSError as error:
                raise CorpusError(f"cannot download {source} ({error}); for offline use set GPTCORE_MIRROR to a "
                                  f"folder holding data/{member}.tsv listed in data/SHA256SUMS") from error
        else:
            archive.write_bytes(Path(source).read_bytes())
        if not zipfile.is_zipfile(archive):
            raise CorpusError(f"{source} is not a zip file, but classify.member is {member!r}; set "
                              "classify.member: null for a plain table")
        with zipfile.ZipFile(archive) as bundle:
            if member not in bundle.namelist():
                raise CorpusError(f"{source} has no member {member!r} (it holds {bundle.namelist()[:5]}); fix "
                                  "classify.member")
            with atomic_path(cached) as extracted:
                extracted.write_bytes(bundle.read(member))
                if sha256:
                    verify_checksum(extracted, sha256, origin, "classify.sha256")
    return cached


def locate_table(config: ClassifyConfig) -> Path:
    """The local, verified table file of classify.source (and classify.member for a zip)."""
    if config.member:
        return fetch_member(config.source, config.member, config.sha256)
    return locate_file(config.source, config.sha256, "classify.source", ".tsv / .csv", "classify.sha256")


def read_table(path: Path, config: ClassifyConfig) -> pd.DataFrame:
    """The text and label columns of the table, read as pandas reads it (quoted fields allowed); every
    row checked: a non-empty text, a label among classify.labels."""
    separator = {"tsv": "\t", "csv": ","}.get(config.format) or ("," if path.suffix.lower() == ".csv" else "\t")
    kind = "CSV" if separator == "," else "TSV"
    with open(path, "rb") as probe:
        if b"\x00" in probe.read(8192):
            raise CorpusError(f"{path} is not a {kind} table (it holds NUL bytes: a binary or zip file?); set "
                              "classify.member for a zip, or give the table")
    try:
        table = pd.read_csv(path, sep=separator, header=None if config.column_names else 0,
                            names=config.column_names, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise CorpusError(f"{path} is not a {kind} table with the columns of classify.column_names "
                          f"({str(error).strip().splitlines()[0]}); fix classify.format or the file") from None
    first_row = 1 if config.column_names else 2  # 1-based, after a header line
    for column in (config.text_column, config.label_column):
        if column not in table.columns:
            raise CorpusError(f"{path} has no column {column!r} (its columns: {list(table.columns)}); fix "
                              "classify.text_column / label_column / column_names")
    table = table[[config.text_column, config.label_column]].set_axis(["text", "label"], axis=1)
    unknown = ~table["label"].isin(config.labels)
    if unknown.any():
        row = int(unknown.to_numpy().argmax())
        raise CorpusError(f"{path} row {row + first_row}: label {table['label'].iloc[row]!r} is not one of "
                          f"classify.labels {config.labels}; add it there or fix the row")
    empty = table["text"].str.strip() == ""
    if empty.any():
        row = int(empty.to_numpy().argmax())
        raise CorpusError(f"{path} row {row + first_row}: the text is empty; remove the row or fill it in")
    check_swallowed_rows(table, path, config.labels, separator, first_row)
    return table


def check_swallowed_rows(table: pd.DataFrame, path: Path, labels, separator: str, first_row: int) -> None:
    """Rows an unclosed quote read as part of one text: lines inside a text that begin with a label and the
    separator (or end with them). Warned with the first text's row and the count; refused above
    SWALLOWED_SHARE of the rows."""
    label = "|".join(re.escape(name) for name in labels)
    row_start = re.compile(rf"[\r\n](?:{label}){re.escape(separator)}|{re.escape(separator)}(?:{label})\r?\n")
    swallowed = table["text"].str.count(row_start)
    if not swallowed.any():
        return
    texts, lines, row = int((swallowed > 0).sum()), int(swallowed.sum()), int((swallowed > 0).to_numpy().argmax())
    where = (f"{path} row {row + first_row}: {texts} text(s) hold {lines} line(s) that read as rows of their own "
             f"(a label and the separator at a line break), {lines / len(table):.2%} of its {len(table):,} rows: an "
             "unclosed quote?")
    if lines / len(table) > SWALLOWED_SHARE:
        raise CorpusError(f"{where} Close the quote, or remove the rows, and prepare again")
    print(f"warning: {where} They stay in that text, as pandas and the book read them", file=sys.stderr)


def balance_and_split(table: pd.DataFrame, config: ClassifyConfig) -> dict[str, pd.DataFrame]:
    """The book's create_balanced_dataset and random_split, generalised to any number of classes."""
    counts = table["label"].value_counts()
    missing = [label for label in config.labels if counts.get(label, 0) == 0]
    if missing:
        raise CorpusError(f"class(es) {missing} of classify.labels have no rows in {config.source}; drop them "
                          "from classify.labels or add rows")
    if config.balance == "undersample":
        rarest = int(counts.min())
        table = pd.concat([rows if len(rows) == rarest else rows.sample(rarest, random_state=config.seed)
                           for rows in (table[table["label"] == label] for label in config.labels)])
    table = table.assign(label=table["label"].map({name: index for index, name in enumerate(config.labels)}))
    table = table.sample(frac=1, random_state=config.seed).reset_index(drop=True)
    train_end = int(len(table) * config.train_ratio)
    val_end = train_end + int(len(table) * config.val_ratio)
    splits = dict(zip(SPLITS, (table[:train_end], table[train_end:val_end], table[val_end:])))
    for name, rows in splits.items():
        if rows.empty:
            raise CorpusError(f"classify.train_ratio {config.train_ratio} / val_ratio {config.val_ratio} leave "
                              f"the {name} split of {len(table)} rows empty; change the ratios or add rows")
    return splits


def prepare_labelled(config: ClassifyConfig, out_dir) -> dict:
    """The stage: out_dir/{train,validation,test}.csv (text, label index) and meta.json (labels, counts,
    the table's sha256)."""
    path = locate_table(config)
    splits = balance_and_split(read_table(path, config), config)
    out_dir = Path(out_dir)
    for name, rows in splits.items():
        atomic_write_text(out_dir / f"{name}.csv", rows[["text", "label"]].to_csv(index=False,
                                                                                  quoting=csv.QUOTE_NONNUMERIC))
    meta = {"labels": list(config.labels), "source": config.source, "sha256": sha256_file(path),
            "rows": {name: len(rows) for name, rows in splits.items()},
            "per_class": {name: [int((rows["label"] == i).sum()) for i in range(len(config.labels))]
                          for name, rows in splits.items()}}
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


def read_split(folder, name: str) -> pd.DataFrame:
    return pd.read_csv(Path(folder) / f"{name}.csv", dtype={"text": str}, keep_default_na=False)
