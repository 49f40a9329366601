"""What measures a model: the loss over a split's windows (loss), the zero-shot benchmarks as
lm-evaluation-harness scores them (zero_shot) and the harness itself as their reference (harness),
ROUGE-L and an LLM judge for responses (judge). A new evaluation goes here.

Imports: the base, model, data, training.
"""
