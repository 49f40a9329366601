"""The fine-tuned classifier as an MLflow pyfunc, logged "from code" (as the language model is): rows of `text`
in, rows of `label` and `probability_<label>` (one column per class) out, as `gptcore classify`.

    mlflow.pyfunc.load_model("models:/gptcore-classifier/1").predict(pd.DataFrame({"text": ["You won!"]}))
"""

import mlflow
import pandas as pd


class GptcoreClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from gptcore.model.runtime import setup_runtime
        from gptcore.model.tokenizer import Tokenizer
        from gptcore.tasks.classification import load_classifier

        self.classifier, self.info = load_classifier(context.artifacts["model"])
        self.runtime = setup_runtime("cpu", "fp32")
        self.tokenizer = Tokenizer()

    def predict(self, context, model_input, params=None):
        from gptcore.serving.requests import request_errors
        from gptcore.tasks.classification import classify

        with request_errors():
            texts = list(model_input["text"] if isinstance(model_input, pd.DataFrame) else model_input)
            rows = classify(self.classifier, self.info, texts, self.tokenizer, self.runtime)
            return pd.DataFrame([{"label": row["label"], **{f"probability_{name}": p for name, p in
                                                              row["probabilities"].items()}} for row in rows])


mlflow.models.set_model(GptcoreClassifier())
