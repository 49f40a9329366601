"""Instruction entries for the book's chapter 7 (the prepare-instructions stage): (instruction, input, output)
from a JSON list or a JSONL file, field names mapped, every entry checked, split in file order as the book
splits them. The preference entries of DPO (instruction, input, chosen, rejected) are read and split the same
way, by their own section's settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import MissingInputError
from .corpus import CorpusError, locate_file, sha256_file

SPLITS = ("train", "validation", "test")
FIELDS = ("instruction", "input", "output")
PREFERENCE_FIELDS = ("instruction", "input", "chosen", "rejected")


def read_entries(path: Path, config, section: str = "instruct", fields: tuple[str, ...] = FIELDS) -> list[dict]:
    """The entries of a JSON list or a JSONL file as {instruction, input, output} (or the given fields), from
    the names the config's <field>_field settings give; every entry checked: each field non-empty text but the
    input, which is text when present. Errors name params.yaml's `section`."""
    path = Path(path)
    lines = config.format == "jsonl" or (config.format == "auto" and path.suffix.lower() == ".jsonl")
    kind = "JSONL file (one JSON object per line)" if lines else "JSON list of entries"
    try:
        text = path.read_text(encoding="utf-8")
        raw = [json.loads(line) for line in text.splitlines() if line.strip()] if lines else json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorpusError(f"{path} is not a {kind} ({error}); fix the file or {section}.format") from None
    if not isinstance(raw, list) or not raw:
        raise CorpusError(f"{path} is not a {kind} with at least one entry; fix the file or {section}.format")
    names = {field: getattr(config, f"{field}_field") for field in fields}
    entries = []
    for number, item in enumerate(raw, start=1):
        where = f"{path} entry {number}"
        if not isinstance(item, dict):
            raise CorpusError(f"{where} is {json.dumps(item)[:80]}, not an object with "
                              f"{' and '.join(repr(names[field]) for field in fields if field != 'input')}; fix the entry")
        entry = {}
        for field, name in names.items():
            value = item.get(name) if name is not None else None
            value = "" if value is None else value  # a null field is an absent one: no input, or none given
            if not isinstance(value, str):
                raise CorpusError(f"{where}: {name!r} is {json.dumps(value)}, not text; fix the entry")
            if field != "input" and not value.strip():
                raise CorpusError(f"{where} has no {name!r} ({section}.{field}_field); fill it in or remove the entry")
            entry[field] = value
        entries.append(entry)
    return entries


def split_entries(entries: list[dict], config, section: str = "instruct") -> dict[str, list[dict]]:
    """The book's split, in file order: the first int(n * train_ratio) train, the next int(n * test_ratio)
    test, the rest validate."""
    train_end = int(len(entries) * config.train_ratio)
    test_end = train_end + int(len(entries) * config.test_ratio)
    splits = {"train": entries[:train_end], "validation": entries[test_end:], "test": entries[train_end:test_end]}
    for name, part in splits.items():
        if not part:
            raise CorpusError(f"{section}.train_ratio {config.train_ratio} / test_ratio {config.test_ratio} leave the "
                              f"{name} split of {len(entries)} entries empty; change the ratios or add entries")
    return splits


def prepare_instructions(config, out_dir, section: str = "instruct", fields: tuple[str, ...] = FIELDS) -> dict:
    """The stage: out_dir/{train,validation,test}.json and meta.json (counts, the source's sha256)."""
    path = locate_file(config.source, config.sha256, f"{section}.source", ".json / .jsonl", f"{section}.sha256")
    entries = read_entries(path, config, section, fields)
    if same := sum(entry["chosen"] == entry["rejected"] for entry in entries if "chosen" in entry):
        print(f"warning: {path}: {same} of {len(entries)} entries have the same chosen and rejected response: they "
              "prefer nothing (their DPO loss stays log 2); fix or remove them", file=sys.stderr)
    splits = split_entries(entries, config, section)
    out_dir = Path(out_dir)
    for name, part in splits.items():
        atomic_write_text(out_dir / f"{name}.json", json.dumps(part, indent=1, ensure_ascii=False) + "\n")
    meta = {"source": config.source, "sha256": sha256_file(path), "entries": {n: len(p) for n, p in splits.items()},
            "with_input": {name: sum(bool(entry["input"]) for entry in part) for name, part in splits.items()}}
    atomic_write_text(out_dir / "meta.json", json.dumps(meta, indent=2) + "\n")
    return meta


def read_split(folder, name: str) -> list[dict]:
    path = Path(folder) / f"{name}.json"
    if not path.is_file():
        raise MissingInputError(f"{path} not found; run the prepare-instructions stage first")
    return json.loads(path.read_text(encoding="utf-8"))
