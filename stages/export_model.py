"""Stage export-instructions: the instruction model in <model> -> <out> as instruct_export says (hugging_face/, a
GGUF with its Ollama Modelfile, or nothing: both are off by default), logged to the model's MLflow run."""

from gptcore.pipelines.export import export_pipeline_model
from gptcore.pipelines.stage import run_stage, stage_arguments


def main() -> None:
    args, params = stage_arguments(__doc__, "model", "out")
    written = export_pipeline_model(params, "instruct", model_dir=args.model, out_dir=args.out)
    print(f"exported {', '.join(str(path) for path in written)}" if written else
          f"nothing to export (instruct_export.hugging_face and instruct_export.gguf are off) -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
