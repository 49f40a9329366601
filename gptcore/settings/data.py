"""params.yaml `data`: where the corpus comes from and how it is split (the prepare stage)."""

from dataclasses import dataclass

from . import check_fields, check_source_checksum, checksum_setting, setting

VERDICT_URL = ("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/01_main-chapter-code/"
               "the-verdict.txt")
VERDICT_SHA256 = "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f"


@dataclass(frozen=True)
class DataConfig:
    source: str = setting(VERDICT_URL, "the book's corpus, Edith Wharton's \"The Verdict\" (public domain); "
                                       "also a local file, a folder of .txt files or a glob")
    sha256: str | None = checksum_setting(VERDICT_SHA256)
    train_ratio: float = setting(0.9, "share of characters for training, the rest validates", low=0.0, high=1.0,
                                 low_open=True, high_open=True)

    def __post_init__(self):
        check_fields(self, "data")
        check_source_checksum(self, "data")
