"""What each DVC stage does, as library functions of validated params: pretraining (pretrain: train,
evaluate, generate-samples), the classifier's (classify) and the instruction model's (instruct) pipelines,
what the fine-tuning ones share (finetune), what every stage script shares (stage), and the exports of
their models for other programs (export). A new stage's body goes in its pipeline's module; its script,
which only wires, in stages/.

Imports: the base, model, data, formats, training, evaluation, tasks, tracking.
"""
