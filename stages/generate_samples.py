"""Stage generate-samples: <models> + params `generate` -> <out>/NN-<prompt>.md (people) and .json (programs)."""

from gptcore.pipelines import pretrain
from gptcore.pipelines.stage import run_stage, stage_arguments


def main() -> None:
    args, params = stage_arguments(__doc__, "models", "out")
    for sample in pretrain.generate_samples(params, model_dir=args.models, out_dir=args.out):
        print(f"--- {sample['prompt']!r}\n{sample['text']}")


if __name__ == "__main__":
    run_stage(main)
