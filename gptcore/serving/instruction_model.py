"""The fine-tuned instruction model as an MLflow pyfunc, logged "from code" (as the language model is):
rows of `instruction` and an optional `input` in, formatted with the template the model was trained on,
rows of `response` out: greedy, as the pipeline's test responses and `gptcore instruct`, unless the request's
params (the generate section's sampler settings, checked as everywhere) say otherwise.

    mlflow.pyfunc.load_model("models:/gptcore-instruct/1").predict(
        pd.DataFrame([{"instruction": "Rewrite the sentence in passive voice.", "input": "The cat ate the fish."}]))
"""

import mlflow
import pandas as pd


class GptcoreInstruct(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from gptcore.model.runtime import setup_runtime
        from gptcore.model.tokenizer import Tokenizer
        from gptcore.tasks.instruction_tuning import load_instruct_model

        self.model, self.template, self.info = load_instruct_model(context.artifacts["model"])
        self.runtime = setup_runtime("cpu", "fp32")
        self.tokenizer = Tokenizer()

    def predict(self, context, model_input, params=None):
        from gptcore.serving.requests import request_errors
        from gptcore.settings.generate import GenerateConfig
        from gptcore.tasks.instruction_tuning import answer

        with request_errors(section="generate"):
            rows = model_input.to_dict("records") if isinstance(model_input, pd.DataFrame) else list(model_input)
            sampler = GenerateConfig(**{"temperature": 0.0, "max_new_tokens": self.info["max_new_tokens"],
                                        **(params or {})})
            responses = answer(self.model, self.template, self.info, rows, self.tokenizer, self.runtime,
                               max_new_tokens=sampler.max_new_tokens, sampler=sampler)
            return pd.DataFrame({"response": responses})


mlflow.models.set_model(GptcoreInstruct())
