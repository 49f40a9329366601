"""Stage prepare: source (params `data`) -> <out>/{train,val}.txt + checksums.json (the book layout), or
<out>/documents.json, the checked documents' manifest (the shards layout)."""

from gptcore.data.documents import prepare_data
from gptcore.pipelines.stage import run_stage, stage_arguments


def main() -> None:
    args, params = stage_arguments(__doc__, "out")
    summary = prepare_data(params.data, args.out)
    if "documents" in summary:
        print(f"prepared {len(summary['sources'])} file(s): {summary['documents']:,} documents "
              f"({summary['skipped']:,} bad lines or rows skipped) -> {args.out}")
    else:
        print(f"prepared {len(summary['sources'])} file(s): {summary['splits']['train']['chars']:,} train and "
              f"{summary['splits']['val']['chars']:,} validation characters -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
