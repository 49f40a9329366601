"""The models as MLflow pyfuncs, each file logged "from code" as a model's code: the language model
(language_model), the classifier (classifier), the instruction model (instruction_model), and the input
errors they answer with HTTP 400 (requests).

Imports: the base, model, formats, tasks.
"""
