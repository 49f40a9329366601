"""`gptcore ui`: MLflow's UI on the project's embedded store, opened on the chart view of its runs."""

from __future__ import annotations

import subprocess
import time

from .runs import Tracker, TrackingUnavailable, local_store, repo_root


def chart_view_url(base: str, experiment_id: str) -> str:
    """Where MLflow 3's UI shows an experiment's runs as charts side by side. The experiment's own page
    opens on the GenAI overview (traces, latency) in a new browser, whatever the experiment's kind tag."""
    return f"{base}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART"


def serve_ui(experiment: str, host: str, port: int, open_browser: bool) -> None:
    """`mlflow ui` on the project's embedded store (its artifact root included), until interrupted; the
    chart view of `experiment` (created if it is new, as training runs) is printed and, where a browser can
    be started, opened."""
    import urllib.request
    import webbrowser

    root = repo_root()
    _, uri, experiment_id = Tracker.open_local(root, experiment)
    _, artifact_root = local_store(root)
    base = f"http://{host}:{port}"
    server = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root", artifact_root,
                               "--host", host, "--port", str(port)])
    try:
        deadline = time.monotonic() + 120
        while server.poll() is None:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TrackingUnavailable(f"mlflow ui did not answer on {base} within 120 s") from None
                time.sleep(0.5)
        else:
            raise TrackingUnavailable(f"mlflow ui exited ({server.returncode}); is port {port} free? (--port)")
        url = chart_view_url(base, experiment_id)
        print(f"MLflow UI of {root / 'mlruns'}: {url}", flush=True)
        if open_browser:
            webbrowser.open(url)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.terminate()
        server.wait(timeout=30)
