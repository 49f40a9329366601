"""params.yaml `instruct_export`: the instruction model written where people run models, beside the pipeline's own
folder (gptcore.pipelines.export): a Hugging Face folder, llama.cpp's GGUF with an Ollama Modelfile; off by
default."""

from dataclasses import dataclass

from . import check_fields, setting

# the GGUF weight types gptcore writes: llama.cpp's ALL_F32, MOSTLY_F16, MOSTLY_Q8_0
GGUF_TYPES = ("f32", "f16", "q8_0")


@dataclass(frozen=True)
class ExportConfig:
    hugging_face: bool = setting(False, "write the model as a Hugging Face folder (<out>/hugging_face: transformers' "
                                        "from_pretrained and pipeline load it offline)")
    gguf: str | None = setting(None, "write it as llama.cpp's GGUF of this type, an Ollama Modelfile beside it: "
                                     "f32 | f16 | q8_0; null = none", choices=GGUF_TYPES)

    def __post_init__(self):
        check_fields(self, "instruct_export")
