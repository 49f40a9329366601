"""`gptcore ui` as a new user's browser shows it: headless Chromium with an empty profile on the URL the
command prints. GPTCORE_UI_SCREENSHOT=docs/mlflow-ui.png also keeps the screenshot of docs/ current."""

import os
import re
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
    """The pretraining pipeline's experiment, its loss curves first, the other pipelines' experiments listed: the
    classifier's and the instruction model's eval/train_loss were drawn in one chart with the pretraining run's,
    on unrelated scales, and train/loss came 2,700 px down under their 19 one-point evaluate/* charts."""
    project = make_project(tmp_path)
    run(["dvc", "repro"], project)
    run(["dvc", "exp", "run", "-S", "train.seed=7"], project)
    client = mlflow_client(project)
    names = {r.info.run_name for r in client.search_runs(["1"])}
    assert len(names) == 2
    other = client.create_experiment("gptcore-classify")  # another pipeline's run, in the same store
    client.log_metric(client.create_run(other, run_name="classifier-run").info.run_id, "eval/train_loss", 0.1)
    port = free_port()
    ui = Server(["gptcore", "ui", "--no-browser", "--port", str(port)], port, project, dict(os.environ))
    with ui:
        url = next(line for line in ui.process.stdout if line.startswith("MLflow UI of")).split()[-1]
        assert url == f"http://127.0.0.1:{port}/#/experiments/1/runs?compareRunsMode=CHART"
        listed = next(line for line in ui.process.stdout if line.startswith("  also")).strip()  # not mlflow's log
        assert listed == f"also experiment gptcore-classify: http://127.0.0.1:{port}/#/experiments/{other}/runs?" \
                         "compareRunsMode=CHART"
        page = browse(url, "--dump-dom")
        screenshot = Path(os.environ.get("GPTCORE_UI_SCREENSHOT") or tmp_path / "ui.png").resolve()
        browse(url, f"--screenshot={screenshot}")
    assert "Training runs" in page and all(name in page for name in names) and "classifier-run" not in page
    sections = re.findall(r">(eval|evaluate|system|train)</", page)
    assert sections[:2] == ["eval", "evaluate"], sections  # the loss curves come first
    assert "eval/val_loss" in page  # a chart of the runs' metrics is drawn, not the GenAI overview
    assert screenshot.stat().st_size > 50_000


def test_gptcore_ui_stopped_by_sigterm_or_sighup_stops_its_workers_and_a_taken_port_is_refused(tmp_path):
    """SIGTERM (a service manager, a script) left `mlflow ui` and its four workers running, reparented and
    holding the port; only Ctrl-C stopped the tree."""
    import signal
    import socket

    import psutil

    env = {**os.environ, "DVC_ROOT": str(tmp_path)}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        port = free_port()
        ui = subprocess.Popen(["gptcore", "ui", "--no-browser", "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert next(line for line in ui.stdout if line.startswith("MLflow UI of"))
            tree = psutil.Process(ui.pid).children(recursive=True)
            assert len(tree) >= 2  # mlflow ui and its workers
            ui.send_signal(signum)
            assert ui.wait(timeout=90) == 0
            gone, alive = psutil.wait_procs(tree, timeout=30)
            assert alive == [], (signum, alive)
        finally:
            if ui.poll() is None:
                os.killpg(ui.pid, signal.SIGKILL)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))  # nothing listens there any more
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        refused = subprocess.run(["gptcore", "ui", "--no-browser", "--port", str(port)], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip() == (f"gptcore ui: error: port {port} on 127.0.0.1 is taken (Address already in "
                                      "use): another server (an mlflow ui?) listens there; stop it or choose another "
                                      "--port")
