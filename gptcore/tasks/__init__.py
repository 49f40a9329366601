"""The tasks the one training loop runs, each a gptcore.training.task.Task: its batches, loss, evaluation and
the model transform it needs: pretraining (language_modeling), the book's chapter-6 classifier
(classification) and chapter-7 instruction tuning (instruction_tuning), each with its saved model. A new
task goes here.

Imports: the base, model, data, formats, training, evaluation.
"""
