"""Stage tokenize: data/prepared/{train,val}.txt -> data/tokens/{train,val}.bin (uint16) + meta.json."""

from __future__ import annotations

import argparse

from gptcore.runtime import physical_cores
from gptcore.stage import run_stage, stage_params
from gptcore.token_files import tokenize_splits


def tokenize(prepared_dir: str, out_dir: str, threads: int) -> dict:
    """GPT-2 BPE over both splits, streamed in chunks on `threads` cores."""
    return tokenize_splits(prepared_dir, out_dir, threads=threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--prepared", default="data/prepared")
    parser.add_argument("--out", default="data/tokens")
    args = parser.parse_args()
    stage_params(path=args.params)  # validate the whole file early; this stage has no params of its own
    meta = tokenize(args.prepared, args.out, physical_cores())
    print(f"tokenized: {meta['splits']['train']['tokens']:,} train and {meta['splits']['val']['tokens']:,} "
          f"validation tokens -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
