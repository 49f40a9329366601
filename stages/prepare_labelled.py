"""Stage prepare-labelled: the labelled table (params `classify`) -> <out>/{train,validation,test}.csv + meta.json."""

from gptcore.labelled import prepare_labelled
from gptcore.stage import run_stage, stage_arguments


def main() -> None:
    args, params = stage_arguments(__doc__, "out")
    meta = prepare_labelled(params.classify, args.out)
    rows = ", ".join(f"{count:,} {name}" for name, count in meta["rows"].items())
    print(f"prepared {rows} rows ({' / '.join(meta['labels'])}) -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
