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


def pytest_addoption(parser):
    parser.addoption("--auto-precision", choices=("fp32", "bf16"), default=None,
                     help="what precision 'auto' resolves to in this test run and the stages it starts "
                          "(sets GPTCORE_AUTO_PRECISION): fp32 runs the suite as an AVX2-only machine would, "
                          "bf16 as an AMX or AVX512-BF16 one would")


def pytest_configure(config):
    from gptcore.runtime import AUTO_PRECISION_ENV

    forced = config.getoption("--auto-precision")
    if forced:
        os.environ[AUTO_PRECISION_ENV] = forced


def pytest_report_header(config):
    from gptcore.machine import cpu_model
    from gptcore.runtime import AUTO_PRECISION_ENV, resolve_precision

    return (f"cpu: {cpu_model()}; precision auto -> {resolve_precision('auto', torch.device('cpu'))}"
            f" ({AUTO_PRECISION_ENV}={os.environ.get(AUTO_PRECISION_ENV, '')})")


def native_bf16() -> bool:
    from gptcore.runtime import fast_bf16

    return fast_bf16(torch.device("cpu"))


# bf16 on a CPU without AVX512-BF16 or AMX is emulated, ~100x slower than fp32: tests of bf16 at any size
# run only where it is native
needs_native_bf16 = pytest.mark.skipif(not native_bf16(), reason="bf16 is emulated on this CPU (no AVX512-BF16/AMX)")


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
