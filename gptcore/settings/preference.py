"""params.yaml `preference`: the preference data, the instruction model it tunes by direct preference optimization
(DPO) and the loss's settings (the book's bonus notebook after chapter 7, dpo-from-scratch.ipynb;
gptcore.tasks.preference_tuning)."""

from dataclasses import dataclass

from . import (check_fields, check_source_checksum, check_split_ratios, checksum_setting, experiment_setting,
               registered_model_setting, setting)
from .instruct import FORMATS, generate_batch_size_setting, max_new_tokens_setting
from .train import fine_tuning_docs

PREFERENCES_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch07/04_preference-tuning-with-dpo/"
                   "instruction-data-with-preference.json")
PREFERENCES_SHA256 = "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e"
# what the log-probabilities leave out besides the padding: the notebook's prompt and its next 2 tokens (the
# "\n\n###" of the Alpaca marker), the prompt and the whole response marker, or nothing
MASKS = ("notebook", "marker", "none")
REFERENCES = ("precomputed", "per_step")

# the notebook's DPO: AdamW 5e-6, weight decay 0.01, 1 epoch of batch 8, no warmup, decay or clipping, losses and
# rewards on 5 batches every 5 steps from step 1
PREFERENCE_TRAIN_DEFAULTS = dict(epochs=1, batch_size=8, peak_lr=5e-6, initial_lr=1e-6, min_lr=1e-6, weight_decay=0.01,
                                 warmup_steps=0, cosine_decay=False, max_grad_norm=0.0, eval_freq=5, eval_offset=1,
                                 eval_iter=5, sample_prompt=None, sample_tokens=0, checkpoint_every=50)
PREFERENCE_TRAIN_DOCS = {
    **fine_tuning_docs("entries", 1, 5, "the LoRA adapters", sample_prompt="greedy sample at each epoch end; null: "
                                                                           "none (the test responses are a stage)",
                       sample_tokens="tokens of that sample; 0 = no sample",
                       checkpoint_every="steps between resume checkpoints (also at the end and on SIGTERM); 0 = "
                                        "only those"),
    "peak_lr": "AdamW's learning rate (the notebook: 5e-6) ...",
    "weight_decay": "AdamW (the notebook: 0.01) ...",
}


@dataclass(frozen=True)
class PreferenceConfig:
    source: str = setting(PREFERENCES_URL, "the preference data: a .json list or .jsonl file of entries with a "
                                           "chosen and a rejected response, or an http(s) URL of one (the "
                                           "notebook's 1,100 entries)")
    sha256: str | None = checksum_setting(PREFERENCES_SHA256)
    format: str = setting("auto", "auto: .jsonl is one entry per line, anything else one JSON list | json | jsonl",
                          choices=FORMATS)
    instruction_field: str = setting("instruction", "the entries' field holding the instruction ...")
    input_field: str | None = setting("input", "... the optional input (null: the entries have none) ...")
    chosen_field: str = setting("chosen", "... the preferred response ...")
    rejected_field: str = setting("rejected", "... and the response to move away from")
    train_ratio: float = setting(0.85, "share of the entries, in file order, that train ...", low=0.0, high=1.0,
                                 low_open=True, high_open=True)
    test_ratio: float = setting(0.1, "... the next ones test; the rest validate (the notebook's 935 / 110 / 55)",
                                low=0.0, high=1.0, low_open=True, high_open=True)
    init_from: str = setting("data/instruct/model", "the instruction model tuned (and the frozen reference): "
                                                    "data/instruct/model (the instruction pipeline's) | a folder "
                                                    "holding an instruction model")
    beta: float = setting(0.1, "DPO's beta: how far the policy may move from the reference (the notebook: 0.1; "
                               "0.1 to 0.5 is usual)", low=0.0, low_open=True)
    reference: str = setting("precomputed", "precomputed: the reference's log-probabilities once per entry before "
                                            "training (TRL's precompute_ref_log_probs; it never changes) | "
                                            "per_step: the frozen reference computes them in every step and "
                                            "evaluation (the notebook)", choices=REFERENCES)
    mask: str = setting("notebook", "tokens left out of the log-probabilities besides the padding: notebook: the "
                                    "prompt and the next 2 tokens (its mask_prompt_tokens) | marker: the prompt and "
                                    "the whole response marker | none", choices=MASKS)
    allowed_max_length: int | None = setting(None, "tokens per prompt + response, longer ones cut (and counted); "
                                                   "null = the model's context (the notebook: 1024)", low=2)
    pad_id: int = setting(50256, "pads both responses of a batch to the longer + 1 (<|endoftext|>, as the "
                                 "notebook)", low=0)
    drop_rate: float = setting(0.0, "dropout of the policy while tuning (the notebook: 0)",
                               low=0.0, high=1.0, high_open=True)
    max_new_tokens: int = max_new_tokens_setting()
    generate_batch_size: int = generate_batch_size_setting()
    experiment: str = experiment_setting("gptcore-preference")
    registered_model: str | None = registered_model_setting("gptcore-preference")

    def __post_init__(self):
        check_fields(self, "preference")
        check_source_checksum(self, "preference")
        check_split_ratios(self, "preference", "train_ratio", "test_ratio", "validation")
