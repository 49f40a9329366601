import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

# Tests run offline against the mirror beside the repo (../shared), as CI does.
# Absolute paths: the end-to-end tests run stages from other folders.
if SHARED.is_dir():
    os.environ["GPTCORE_MIRROR"] = str(Path(os.environ.get("GPTCORE_MIRROR", SHARED)).resolve())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(Path(os.environ.get("TIKTOKEN_CACHE_DIR", SHARED / "tiktoken")).resolve())
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared (offline corpora and tokenizer files) is not beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def tokenizer():
    from gptcore.tokenizer import Tokenizer

    return Tokenizer()


@pytest.fixture(scope="session")
def fault_env():
    """fault_env(GPTCORE_KILL_AT=...): an environment for a subprocess in which
    tests/fault_injection/sitecustomize.py injects that fault (see its docstring)."""
    folder = str(Path(__file__).resolve().parent / "fault_injection")

    def environment(**variables: str) -> dict:
        path = os.pathsep.join(filter(None, [folder, os.environ.get("PYTHONPATH")]))
        return {**os.environ, **variables, "PYTHONPATH": path}

    return environment
