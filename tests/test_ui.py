"""`gptcore ui` as a new user's browser shows it: headless Chromium with an empty profile on the URL the
command prints. GPTCORE_UI_SCREENSHOT=docs/mlflow-ui.png also keeps the screenshot of docs/ current."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import Server, free_port, make_project, mlflow_client, run

pytestmark = pytest.mark.slow
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def browse(url: str, *outputs: str) -> str:
    """What Chromium, started with an empty profile, writes for `outputs` (--dump-dom, --screenshot=...) once
    the page has had 90 s of its own time to load its data and draw."""
    with tempfile.TemporaryDirectory() as profile:
        shown = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                                "--window-size=1500,950", "--virtual-time-budget=90000", *outputs, url],
                               capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    return shown.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium to open the UI in (Debian: apt-get install chromium)")
def test_gptcore_ui_opens_the_chart_view_of_the_projects_runs(tmp_path):
    project = make_project(tmp_path)
    run(["dvc", "repro", "train"], project)
    run(["dvc", "exp", "run", "train", "-S", "train.seed=7"], project)
    names = {r.info.run_name for r in mlflow_client(project).search_runs(["1"])}
    assert len(names) == 2
    port = free_port()
    ui = Server(["gptcore", "ui", "--no-browser", "--port", str(port)], port, project, dict(os.environ))
    with ui:
        url = next(line for line in ui.process.stdout if line.startswith("MLflow UI of")).split()[-1]
        assert url == f"http://127.0.0.1:{port}/#/experiments/1/runs?compareRunsMode=CHART"
        page = browse(url, "--dump-dom")
        screenshot = Path(os.environ.get("GPTCORE_UI_SCREENSHOT") or tmp_path / "ui.png").resolve()
        browse(url, f"--screenshot={screenshot}")
    assert "Training runs" in page and all(name in page for name in names)
    assert "eval/val_loss" in page  # a chart of the runs' metrics is drawn, not the GenAI overview
    assert screenshot.stat().st_size > 50_000
