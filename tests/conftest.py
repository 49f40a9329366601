import os
import shutil
import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    from gptcore.model.runtime import AUTO_PRECISION_ENV

    forced = config.getoption("--auto-precision")
    if forced:
        os.environ[AUTO_PRECISION_ENV] = forced


def pytest_report_header(config):
    from gptcore.machine import cpu_model
    from gptcore.model.runtime import AUTO_PRECISION_ENV, resolve_precision

    return (f"cpu: {cpu_model()}; precision auto -> {resolve_precision('auto', torch.device('cpu'))}"
            f" ({AUTO_PRECISION_ENV}={os.environ.get(AUTO_PRECISION_ENV, '')})")


def native_bf16() -> bool:
    from gptcore.model.runtime import fast_bf16

    return fast_bf16(torch.device("cpu"))


# bf16 on a CPU without AVX512-BF16 or AMX is emulated, ~100x slower than fp32: tests of bf16 at any size
# run only where it is native
needs_native_bf16 = pytest.mark.skipif(not native_bf16(), reason="bf16 is emulated on this CPU (no AVX512-BF16/AMX)")


def run(args, cwd, **kwargs) -> str:
    """Run a command of the end-to-end tests; its stdout, or a failure showing both streams."""
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def make_project(root: Path) -> Path:
    """A git + DVC copy of the tracked project files in root, switched to the tiny preset for speed."""
    from gptcore.params import read_yaml, render, validate

    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    for name in tracked:
        if (REPO / name).is_file() and not name.startswith(("metrics/", "plots/")):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    for lock in root.rglob("dvc.lock"):  # the pipelines' own runs, whose outputs the copy does not have
        lock.unlink()
    values = validate(read_yaml(root / "params.yaml")).values
    values["model"].update(preset="tiny", context_length=32)
    values["train"].update(epochs=2, eval_freq=20, checkpoint_every=40, sample_tokens=5, warmup_steps=5)
    values["generate"]["max_new_tokens"] = 8
    (root / "params.yaml").write_text(render(values))
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], root)
    return root


def mlflow_client(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared (offline corpora and tokenizer files) is not beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def tokenizer():
    from gptcore.model.tokenizer import Tokenizer

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


def store_env(project) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"}


def http(url: str, body: dict | None = None, timeout: float = 60):
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        text = response.read().decode()
        return json.loads(text) if response.headers.get_content_type() == "application/json" and text.strip() \
            else text


def refusal(url: str, body: dict) -> tuple[int, dict]:
    """The HTTP status and JSON body of a request the server refuses."""
    try:
        http(url, body)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read().decode())
    raise AssertionError(f"{url} accepted {body}")


class Server:
    """A command that serves HTTP on a loopback port, started for a with-block and stopped after it."""

    def __init__(self, command: list[str], port: int, cwd, env, ready_path: str = "/health"):
        self.command, self.port, self.cwd, self.env, self.ready_path = command, port, cwd, env, ready_path

    def __enter__(self):
        self.process = subprocess.Popen(self.command, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.command} exited:\n{self.process.stdout.read()}")
            try:
                http(f"http://127.0.0.1:{self.port}{self.ready_path}", timeout=2)
                return f"http://127.0.0.1:{self.port}"
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"{self.command} did not answer on port {self.port} within 120 s")

    def __exit__(self, *exc):
        os.killpg(self.process.pid, 15)
        self.process.wait(timeout=30)
        self.process.stdout.close()


def interrupt_at(trainer, step: int):
    """Run trainer until `step`, then stop it there as SIGTERM does (a checkpoint is saved)."""
    from gptcore.training.callbacks import TrainerCallback
    from gptcore.training.trainer import TrainingInterrupted

    class StopAt(TrainerCallback):
        def on_step(self, record):
            if record["step"] == step:
                trainer.stop_signal = "SIGTERM"

    trainer.callbacks.append(StopAt())
    with pytest.raises(TrainingInterrupted, match=f"step {step}"):
        trainer.fit()


class JudgeServer:
    """A local server speaking Ollama's /api/chat (streamed lines) and OpenAI's /v1/chat/completions: it
    answers every prompt with the number of words in the response it quotes, and records the requests."""

    def __init__(self):
        requests = self.requests = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"Ollama is running")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                requests.append((self.path, body))
                quoted = body["messages"][0]["content"].split("score the model response `")[1].split("`")[0]
                score = str(len(quoted.split()))
                self.send_response(200)
                self.end_headers()
                if self.path == "/api/chat":
                    for part in (score[:1], score[1:]):
                        self.wfile.write(json.dumps({"message": {"role": "assistant", "content": part}}).encode() + b"\n")
                else:
                    self.wfile.write(json.dumps({"choices": [{"message": {"content": score}}]}).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
