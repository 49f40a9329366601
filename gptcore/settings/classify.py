"""params.yaml `classify`: the labelled data, its split and the classifier made from a pretrained model
(the book's chapter 6; gptcore.data.labelled prepares the data, gptcore.tasks.classification fine-tunes)."""

from dataclasses import dataclass

from ..errors import ConfigError
from . import (book_heads_setting, check_fields, check_source_checksum, check_split_ratios, checksum_setting,
               experiment_setting, registered_model_setting, setting)
from .train import fine_tuning_docs

SPAM_URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
SPAM_MEMBER = "SMSSpamCollection"
SPAM_SHA256 = "7d039a24a6083ed9ef0f806ebad56bbb976e3aeb8de05669173bfdc4996c239d"  # of the member (the TSV)
TABLE_FORMATS = ("auto", "tsv", "csv")
BALANCING = ("undersample", "none")
# last_block: the last transformer block, the final LayerNorm and the new head (the book); head: the head only
TRAINABLE = ("last_block", "all", "head")
# last: the last position, padding included (the book) | last_token: the last real token (Hugging Face's
# GPT2ForSequenceClassification)
POSITIONS = ("last", "last_token")

# the book's chapter-6 training (gpt_class_finetune.py): AdamW 5e-5, weight decay 0.1, 5 epochs of batch 8,
# no warmup, decay or clipping, losses on 5 batches every 50 steps from step 1, accuracies at epoch ends
CLASSIFY_TRAIN_DEFAULTS = dict(epochs=5, batch_size=8, peak_lr=5e-5, warmup_steps=0, cosine_decay=False,
                               max_grad_norm=0.0, eval_freq=50, eval_offset=1, eval_iter=5, sample_prompt=None,
                               sample_tokens=0, checkpoint_every=0)
# what those settings mean for the classifier, where the training loop's own words describe pretraining
CLASSIFY_TRAIN_DOCS = fine_tuning_docs(
    "rows", 5, 50, "the new head", sample_prompt="greedy sample at each epoch end; null: none (a class head writes no "
                                                 "text)",
    sample_tokens="tokens of that sample; 0 = no sample (a class head writes no text)",
    checkpoint_every="steps between resume checkpoints (also at the end and on SIGTERM); 0 = only those (the "
                     "book's run is minutes)")


@dataclass(frozen=True)
class ClassifyConfig:
    source: str = setting(SPAM_URL, "the labelled table: a .tsv / .csv file, or an http(s) URL of one or of a "
                                    "zip (the book's SMS Spam Collection)")
    member: str | None = setting(SPAM_MEMBER, "the table's name inside a zip source; null: the source is the "
                                              "table")
    sha256: str | None = checksum_setting(SPAM_SHA256, "the table (a zip's member)")
    format: str = setting("auto", "auto: .csv is comma-separated, anything else tab-separated | tsv | csv",
                          choices=TABLE_FORMATS)
    column_names: list[str] | None = setting(["label", "text"], "names of the columns of a table without a "
                                                                "header row; null: its first row names them")
    text_column: str = setting("text", "the column holding the texts ...")
    label_column: str = setting("label", "... and the one holding their labels")
    labels: list[str] = setting(["ham", "spam"], "the label names in class order: class i is labels[i]")
    balance: str = setting("undersample", "undersample: every class down to the rarest one's count (the "
                                          "book) | none", choices=BALANCING)
    train_ratio: float = setting(0.7, "share of the (balanced, shuffled) rows that train ...", low=0.0,
                                 high=1.0, low_open=True, high_open=True)
    val_ratio: float = setting(0.1, "... and that validate; the rest is the test split", low=0.0, high=1.0,
                               low_open=True, high_open=True)
    seed: int = setting(123, "of the balancing and the shuffle (pandas random_state)", low=0)
    max_length: int | None = setting(None, "tokens per text, longer ones cut (and counted); null = the longest "
                                           "training text (the book), at most the model's context", low=1)
    pad_id: int = setting(50256, "pads every text to max_length (<|endoftext|>, as the book)", low=0)
    init_from: str = setting("models", "the pretrained model: models (this project's train stage) | gpt2 ... "
                                       "gpt2-xl | a model folder | a book model.pth")
    n_heads: int | None = book_heads_setting()
    drop_rate: float = setting(0.0, "dropout while fine-tuning (the book: 0)", low=0.0, high=1.0, high_open=True)
    trainable: str = setting("last_block", "last_block: the last block, final LayerNorm and head (the book) | "
                                           "all | head; with LoRA only the adapters train", choices=TRAINABLE)
    position: str = setting("last", "which position classifies: last (padding included, the book) | "
                                    "last_token (the last real token, as Hugging Face)", choices=POSITIONS)
    cache_frozen: bool = setting(True, "run the frozen leading blocks once per text and train on their output "
                                       "(the same numbers; with drop_rate 0 and no adapters in them)")
    experiment: str = experiment_setting("gptcore-classify")
    registered_model: str | None = registered_model_setting("gptcore-classifier")

    def __post_init__(self):
        check_fields(self, "classify")
        check_source_checksum(self, "classify")
        check_split_ratios(self, "classify", "train_ratio", "val_ratio", "test")
        if len(set(self.labels)) < 2 or len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"classify.labels = {self.labels!r}: give at least two distinct label names")
        for key in ("text_column", "label_column"):
            if self.column_names is not None and getattr(self, key) not in self.column_names:
                raise ConfigError(f"classify.{key} = {getattr(self, key)!r} is not one of classify.column_names "
                                  f"{self.column_names!r}; name one of those columns")
