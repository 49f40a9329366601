"""Stage tokenize: <prepared>/{train,val}.txt -> <out>/{train,val}.bin (uint16 GPT-2 BPE), or the documents of
<prepared>/documents.json -> <out>/{train,val}_NNNNNN.bin shards (resumable: a killed run continues in
checkpoints/tokenize/); and <out>/meta.json."""

from gptcore.data.documents import MANIFEST
from gptcore.data.shards import tokenize_documents
from gptcore.data.token_files import tokenize_splits
from gptcore.pipelines.stage import run_stage, stage_arguments
from gptcore.tracking.runs import repo_root


def main() -> None:
    args, _ = stage_arguments(__doc__, "prepared", "out")  # no params of its own; the file is still checked
    if (args.prepared / MANIFEST).is_file():  # the shards layout's manifest
        meta = tokenize_documents(args.prepared, args.out, repo_root() / "checkpoints" / "tokenize")
    else:
        meta = tokenize_splits(args.prepared, args.out)
    print(f"tokenized: {meta['splits']['train']['tokens']:,} train and {meta['splits']['val']['tokens']:,} "
          f"validation tokens -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
