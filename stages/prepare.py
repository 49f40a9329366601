"""Stage prepare: corpus source (params `data`) -> data/prepared/{train,val}.txt + checksums.json."""

from __future__ import annotations

import argparse
import json

from gptcore.corpus import prepare_corpus, resolve_sources
from gptcore.stage import run_stage, stage_params


def prepare(data: dict, out_dir: str) -> dict:
    """Fetch or find the corpus, verify it, and split it by characters into train and validation text."""
    paths = resolve_sources(data["source"], data["sha256"])
    return prepare_corpus(paths, out_dir, data["train_ratio"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/prepared")
    args = parser.parse_args()
    params = stage_params("data", path=args.params)
    summary = prepare(params["data"], args.out)
    splits = summary["splits"]
    print(f"prepared {len(summary['sources'])} file(s): {splits['train']['chars']:,} train and "
          f"{splits['val']['chars']:,} validation characters -> {args.out}")
    print(json.dumps({"sources": [s["path"] for s in summary["sources"]]}))


if __name__ == "__main__":
    run_stage(main)
