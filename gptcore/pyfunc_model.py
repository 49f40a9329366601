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
        from gptcore.checkpoint import load_model
        from gptcore.tokenizer import Tokenizer

        self.model = load_model(context.artifacts["model"]).eval()
        self.tokenizer = Tokenizer()

    def predict(self, context, model_input, params=None):
        import torch

        from gptcore.sampling import check_prompt, generate
        from gptcore.settings.generate import GenerateConfig

        prompts = list(model_input["prompt"] if isinstance(model_input, pd.DataFrame) else model_input)
        settings = GenerateConfig(prompts=prompts, **(params or {}))
        texts = []
        for index, prompt in enumerate(settings.prompts):
            ids = self.tokenizer.encode(prompt)
            check_prompt(len(ids), self.model.config.context_length, f"prompt {index}")
            out = generate(self.model, torch.tensor([ids]), settings.max_new_tokens, temperature=settings.temperature,
                           top_k=settings.top_k, top_p=settings.top_p,
                           eos_id=self.tokenizer.eot_id if settings.stop_at_eos else None,
                           seed=None if settings.seed is None else settings.seed + index)
            texts.append(self.tokenizer.decode(out[0].tolist()))
        return pd.DataFrame({"text": texts})


mlflow.models.set_model(GptcoreModel())
