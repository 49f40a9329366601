"""The errors a user can act on. The CLI and the stages print these as one line and exit 1; any other
exception is a bug and keeps its traceback."""

import contextlib
import re


class GptcoreError(Exception):
    """Base of every user-facing error: its message names the bad value and what to do."""


class ConfigError(GptcoreError, ValueError):
    """A setting with a bad value (params.yaml, a model config, a sampler option, a device)."""


class MissingInputError(GptcoreError, FileNotFoundError):
    """An input file or folder that is not there (a model, token files, a stage's output)."""


class DownloadError(GptcoreError):
    """Something that has to be fetched could not be (offline, DNS, proxy); the message says how to work
    offline."""


def renamed_keys(error: GptcoreError, section: str, name) -> str:
    """The error's message with every `section.key` it names written as name(key): where the settings of
    a params.yaml section arrive under other names (command-line options, a served model's params)."""
    return re.sub(rf"\b{section}\.(\w+)", lambda key: name(key[1]), str(error))


@contextlib.contextmanager
def keys_renamed(section: str, name):
    """A GptcoreError raised in the block leaves with renamed_keys' message, as the same kind of error."""
    try:
        yield
    except GptcoreError as error:
        raise type(error)(renamed_keys(error, section, name)) from None
