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

        from gptcore.checkpoint import load_model
        from gptcore.inference import prepare_for_inference
        from gptcore.settings.generate import GenerateConfig
        from gptcore.tokenizer import Tokenizer

        self.model = prepare_for_inference(load_model(context.artifacts["model"]), GenerateConfig().weights,
                                           torch.device("cpu"))  # the default, as `gptcore generate` decodes
        self.tokenizer = Tokenizer()

    def predict(self, context, model_input, params=None):
        from gptcore.sampling import continue_prompts
        from gptcore.settings.generate import GenerateConfig
        from gptcore.tracking import request_errors

        with request_errors(section="generate"):
            prompts = list(model_input["prompt"] if isinstance(model_input, pd.DataFrame) else model_input)
            settings = GenerateConfig(**(params or {}))  # the sampler; its prompts are params.yaml's
            continued = continue_prompts(self.model, self.tokenizer, prompts, settings, name="prompt")
            return pd.DataFrame({"text": [self.tokenizer.decode(c["prompt_ids"] + c["new_ids"]) for c in continued]})


mlflow.models.set_model(GptcoreModel())
