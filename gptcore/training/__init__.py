"""The one training loop: `train_step` and `Trainer` (trainer), the interface a task implements for it
(task), the learning-rate schedule (schedule), what the loop reports (callbacks), resumable checkpoints
(checkpoint) and DDP (distributed). It knows nothing of tokens, classes or MLflow.

Imports: the base, model, data, formats.
"""
