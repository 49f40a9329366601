"""The fine-tuned classifier as an MLflow pyfunc, logged "from code" (as gptcore/pyfunc_model.py): rows
of `text` in, rows of `label` and `probability_<label>` (one column per class) out, as `gptcore classify`.

    mlflow.pyfunc.load_model("models:/gptcore-classifier/1").predict(pd.DataFrame({"text": ["You won!"]}))
"""

import mlflow
import pandas as pd


class GptcoreClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from gptcore.classifier import load_classifier
        from gptcore.runtime import setup_runtime
        from gptcore.tokenizer import Tokenizer

        self.classifier, self.info = load_classifier(context.artifacts["model"])
        self.runtime = setup_runtime("cpu", "fp32")
        self.tokenizer = Tokenizer()

    def predict(self, context, model_input, params=None):
        from gptcore.classifier import classify
        from gptcore.tracking import request_errors

        with request_errors():
            texts = list(model_input["text"] if isinstance(model_input, pd.DataFrame) else model_input)
            rows = classify(self.classifier, self.info, texts, self.tokenizer, self.runtime)
            return pd.DataFrame([{"label": row["label"], **{f"probability_{name}": p for name, p in
                                                              row["probabilities"].items()}} for row in rows])


mlflow.models.set_model(GptcoreClassifier())
