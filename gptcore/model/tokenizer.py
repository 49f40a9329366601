"""GPT-2 byte-pair encoding through tiktoken, usable offline from a mirror folder."""

from __future__ import annotations

import os
from pathlib import Path

import tiktoken

from ..errors import DownloadError

EOT_TOKEN = "<|endoftext|>"

OFFLINE_HELP = ("set TIKTOKEN_CACHE_DIR to a folder holding tiktoken's cached GPT-2 files (vocab.bpe and "
                "encoder.json under their cache names, e.g. ../shared/tiktoken), or GPTCORE_MIRROR to a "
                "mirror folder with a tiktoken/ subfolder")


def use_mirror_for_tiktoken() -> None:
    """Point tiktoken's cache at $GPTCORE_MIRROR/tiktoken unless TIKTOKEN_CACHE_DIR is set already."""
    mirror = os.environ.get("GPTCORE_MIRROR")
    if mirror and "TIKTOKEN_CACHE_DIR" not in os.environ and (Path(mirror) / "tiktoken").is_dir():
        os.environ["TIKTOKEN_CACHE_DIR"] = str(Path(mirror).resolve() / "tiktoken")


class Tokenizer:
    """encode/decode with the GPT-2 vocabulary; `<|endoftext|>` in text encodes to eot_id (50256)."""

    def __init__(self):
        use_mirror_for_tiktoken()
        try:
            self.encoding = tiktoken.get_encoding("gpt2")
        except Exception as error:  # tiktoken raises requests/OS errors when it cannot download
            raise DownloadError(f"cannot load the GPT-2 BPE vocabulary ({type(error).__name__}: {error}); "
                               f"to work offline, {OFFLINE_HELP}") from error
        self.eot_id = self.encoding.eot_token
        self.n_vocab = self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode(text, allowed_special={EOT_TOKEN})

    def encode_batch(self, texts: list[str], num_threads: int = 2) -> list[list[int]]:
        return self.encoding.encode_batch(texts, num_threads=num_threads, allowed_special={EOT_TOKEN})

    def decode(self, token_ids) -> str:
        return self.encoding.decode(list(token_ids))
