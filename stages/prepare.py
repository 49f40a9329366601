"""Stage prepare: corpus source (params `data`) -> <out>/{train,val}.txt + checksums.json."""

from gptcore.data.corpus import prepare_data
from gptcore.pipelines.stage import run_stage, stage_arguments


def main() -> None:
    args, params = stage_arguments(__doc__, "out")
    summary = prepare_data(params.data, args.out)
    print(f"prepared {len(summary['sources'])} file(s): {summary['splits']['train']['chars']:,} train and "
          f"{summary['splits']['val']['chars']:,} validation characters -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
