"""Stage tokenize: <prepared>/{train,val}.txt -> <out>/{train,val}.bin (uint16 GPT-2 BPE) + meta.json."""

from gptcore.pipelines.stage import run_stage, stage_arguments
from gptcore.data.token_files import tokenize_splits


def main() -> None:
    args, _ = stage_arguments(__doc__, "prepared", "out")  # no params of its own; the file is still checked
    meta = tokenize_splits(args.prepared, args.out)
    print(f"tokenized: {meta['splits']['train']['tokens']:,} train and {meta['splits']['val']['tokens']:,} "
          f"validation tokens -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
