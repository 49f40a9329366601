"""params.yaml `data`: where the corpus comes from, how it is split (the prepare stage) and laid out in token files
(the tokenize stage)."""

from dataclasses import dataclass

from . import check_fields, check_source_checksum, checksum_setting, setting

VERDICT_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/"
               "the-verdict.txt")
VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"
LAYOUTS = ("auto", "book", "shards")


@dataclass(frozen=True)
class DataConfig:
    source: str = setting(VERDICT_URL, "the book's corpus, Edith Wharton's \"The Verdict\" (public domain); "
                                       "also a local file, a folder or a glob of .txt, .jsonl or .parquet files")
    sha256: str | None = checksum_setting(VERDICT_SHA256)
    layout: str = setting("auto", "book: files joined by <|endoftext|>, split by characters, one token file per "
                                  "split | shards: each document followed by <|endoftext|>, held-out documents "
                                  "validate, token shards (GPT-2, build-nanogpt) | auto: book for .txt, shards for "
                                  "JSONL and Parquet", choices=LAYOUTS)
    train_ratio: float = setting(0.9, "share for training, the rest validates: of the characters (book) or of the "
                                      "documents, every 1/(1 - train_ratio)-th one held out (shards)", low=0.0,
                                 high=1.0, low_open=True, high_open=True)
    text_field: str = setting("text", "the field (JSONL) or column (Parquet) holding a document's text")
    skip_bad_lines: bool = setting(False, "skip JSONL lines that are not JSON objects with the text field, and "
                                          "Parquet rows without text, with a counted warning | false: stop at the "
                                          "first")
    shard_tokens: int = setting(100_000_000, "tokens per shard (shards layout; build-nanogpt's 1e8)", low=1)

    def __post_init__(self):
        check_fields(self, "data")
        check_source_checksum(self, "data")
