"""The trained model as an MLflow pyfunc, logged "from code": MLflow stores this file as the model's
code and the model folder (safetensors weights + config) as its artifact, so loading it unpickles
nothing. Rows of `prompt` in, rows of `text` out; the sampler settings are inference params with the
defaults of params.yaml's generate section (prompt i samples with seed + i, as the pipeline's samples).

    mlflow.pyfunc.load_model("models:/gptcore/1").predict(pd.DataFrame({"prompt": ["Every effort"]}),
                                                          params={"temperature": 0.0})
"""

import mlflow
import pandas as pd


class GptcoreModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        import torch

        from gptcore.formats.loading import load_model
        from gptcore.model.inference import prepare_for_inference
        from gptcore.model.tokenizer import Tokenizer
        from gptcore.settings.generate import GenerateConfig

        self.model = prepare_for_inference(load_model(context.artifacts["model"]), GenerateConfig().weights,
                                           torch.device("cpu"))  # the default, as `gptcore generate` decodes
        self.tokenizer = Tokenizer()

    def predict(self, context, model_input, params=None):
        from gptcore.model.sampling import continue_prompts
        from gptcore.serving.requests import request_errors
        from gptcore.settings.generate import GenerateConfig

        with request_errors(section="generate"):
            prompts = list(model_input["prompt"] if isinstance(model_input, pd.DataFrame) else model_input)
            settings = GenerateConfig(**(params or {}))  # the sampler; its prompts are params.yaml's
            continued = continue_prompts(self.model, self.tokenizer, prompts, settings, name="prompt")
            return pd.DataFrame({"text": [self.tokenizer.decode(c["prompt_ids"] + c["new_ids"]) for c in continued]})


mlflow.models.set_model(GptcoreModel())
