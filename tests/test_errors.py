"""One error policy: a GptcoreError is one line and exit 1 in the stages and the CLI; anything else is a
bug and keeps its traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptcore.cli import build_parser, main
from gptcore.errors import ConfigError, GptcoreError
from gptcore.pipelines.stage import run_stage
from gptcore.settings import default
from gptcore.settings.generate import GenerateConfig

REPO = Path(__file__).resolve().parents[1]


def offline_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GPTCORE_MIRROR", "TIKTOKEN_CACHE_DIR")}
    return env | {"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"), "HTTPS_PROXY": "http://127.0.0.1:9",
                  "HTTP_PROXY": "http://127.0.0.1:9"}


def test_the_same_failure_is_one_line_in_a_stage_and_in_the_cli(tmp_path):
    """The tokenizer without its vocabulary and without network: a DownloadError, reported alike."""
    (tmp_path / "prepared").mkdir()
    for split in ("train", "val"):
        (tmp_path / "prepared" / f"{split}.txt").write_text("some text\n")
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    stage = subprocess.run([sys.executable, str(REPO / "stages" / "tokenize_text.py"), "--params", "params.yaml",
                            "--prepared", "prepared", "--out", "tokens"], cwd=tmp_path, env=offline_env(tmp_path),
                           capture_output=True, text=True, timeout=120)
    cli = subprocess.run([sys.executable, "-m", "gptcore.cli", "generate", "Hi", "--model", "gpt2-nonexistent"],
                         cwd=tmp_path, env=offline_env(tmp_path), capture_output=True, text=True, timeout=120)
    for result in (stage, cli):
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert stage.stderr.startswith("error: cannot load the GPT-2 BPE vocabulary")
    assert "TIKTOKEN_CACHE_DIR" in stage.stderr and "GPTCORE_MIRROR" in stage.stderr
    assert cli.stderr.startswith("gptcore generate: error: gpt2-nonexistent holds no gptcore model")


def test_a_bug_keeps_its_traceback(capsys):
    def buggy():
        raise KeyError("a bug")

    def user_error():
        raise ConfigError("train.x = 1 is invalid")

    with pytest.raises(KeyError):
        run_stage(buggy)
    with pytest.raises(SystemExit) as stopped:
        run_stage(user_error)
    assert stopped.value.code == 1 and capsys.readouterr().err == "error: train.x = 1 is invalid\n"


def test_every_user_error_class_is_a_gptcore_error():
    from gptcore.data.corpus import CorpusError
    from gptcore.data.loaders import SplitTooShortError
    from gptcore.formats.book import LfsFormatError
    from gptcore.formats.huggingface import HfFormatError
    from gptcore.formats.model_folder import CheckpointError
    from gptcore.params import ParamsError
    from gptcore.tracking.runs import TrackingUnavailable
    from gptcore.training.trainer import NonFiniteLossError, TrainingInterrupted

    for error in (CheckpointError, CorpusError, SplitTooShortError, HfFormatError, LfsFormatError, ParamsError,
                  TrackingUnavailable, NonFiniteLossError, TrainingInterrupted):
        assert issubclass(error, GptcoreError), error


def test_cli_generate_defaults_are_the_generate_section():
    args = build_parser().parse_args(["generate", "Hi"])
    for name, definition in GenerateConfig.__dataclass_fields__.items():
        if hasattr(args, name):
            assert getattr(args, name) == default(definition), name
    assert main(["generate", "Hi", "--top-k", "null", "--top-p", "none", "--model", "/nonexistent"]) == 1


def test_a_checksum_mismatch_names_the_setting_or_option_that_holds_the_sum(tmp_path, shared_dir, capsys):
    """It always ended "fix data.sha256 or the source", whatever held the sum."""
    from gptcore.data.corpus import CorpusError
    from gptcore.data.instructions import prepare_instructions
    from gptcore.data.labelled import prepare_labelled
    from gptcore.evaluation.zero_shot import load_tasks
    from gptcore.formats.model_folder import save_model
    from gptcore.model.gpt import GPT, ModelConfig
    from gptcore.model.tokenizer import Tokenizer
    from gptcore.settings.classify import ClassifyConfig
    from gptcore.settings.instruct import InstructConfig
    from gptcore.settings.zero_shot import ZeroShotConfig

    wrong, data = "0" * 64, shared_dir / "data"
    cases = [(lambda: prepare_labelled(ClassifyConfig(source=str(data / "SMSSpamCollection.tsv"), member=None,
                                                      sha256=wrong), tmp_path / "c"), "classify.sha256"),
             (lambda: prepare_instructions(InstructConfig(source=str(data / "instruction-data.json"), sha256=wrong),
                                           tmp_path / "i"), "instruct.sha256"),
             (lambda: load_tasks(["lambada"], ZeroShotConfig(lambada_source=str(data / "lambada_test.jsonl"),
                                                             lambada_sha256=wrong), Tokenizer(), 1),
              "zero_shot.lambada_sha256")]
    for load, key in cases:
        with pytest.raises(CorpusError, match=rf"checksum mismatch for .*: expected sha256 {wrong} \({key}\), got "
                                              rf"[0-9a-f]{{64}} .*; fix {key} or the source$"):
            load()
    save_model(GPT(ModelConfig.from_preset("tiny")), tmp_path / "model")
    assert main(["eval", "--tasks", "lambada", "--model", str(tmp_path / "model"), "--lambada-source",
                 str(data / "lambada_test.jsonl"), "--lambada-sha256", wrong]) == 1
    assert capsys.readouterr().err.strip().endswith("; fix --lambada-sha256 or the source")


def test_a_wrong_sum_of_a_zip_member_the_mirror_holds_is_said_to_be_the_mirrors_not_a_download_to_make(tmp_path,
                                                                                                      shared_dir,
                                                                                                      monkeypatch):
    """With GPTCORE_MIRROR set and holding the table, a wrong classify.sha256 said "for offline use set
    GPTCORE_MIRROR": the mirror was searched by the member's name and the wrong sum, found nothing, and a download
    was tried."""
    from gptcore.data.corpus import CorpusError
    from gptcore.data.labelled import prepare_labelled
    from gptcore.settings.classify import ClassifyConfig

    monkeypatch.setenv("GPTCORE_MIRROR", str(shared_dir))
    monkeypatch.setenv("GPTCORE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CorpusError) as refused:
        prepare_labelled(ClassifyConfig(sha256="0" * 64), tmp_path / "out")
    message = str(refused.value)
    assert "the mirror's copy: expected sha256 " + "0" * 64 + " (classify.sha256)" in message
    assert str(shared_dir / "data" / "SMSSpamCollection.tsv") in message and "GPTCORE_MIRROR" not in message
