"""`gptcore ui`: MLflow's UI on the project's embedded store, opened on the chart view of its runs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

from .runs import Tracker, TrackingUnavailable, local_store, repo_root


def chart_view_url(base: str, experiment_id: str) -> str:
    """Where MLflow 3's UI shows an experiment's runs as charts side by side. The experiment's own page
    opens on the GenAI overview (traces, latency) in a new browser, whatever the experiment's kind tag."""
    return f"{base}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART"


def serve_ui(experiment: str, host: str, port: int, open_browser: bool) -> None:
    """`mlflow ui` on the project's embedded store (its artifact root included), until interrupted (Ctrl-C,
    SIGTERM or SIGHUP, which stop its workers too); the chart view of `experiment` (created if it is new, as
    training runs) is printed and, where a browser can be started, opened, and the chart views of the store's
    other experiments (the other pipelines') are listed. A port already taken is refused before anything
    starts."""
    import urllib.request
    import webbrowser

    refuse_a_taken_port(host, port)
    root = repo_root()
    client, uri, experiment_id = Tracker.open_local(root, experiment)
    _, artifact_root = local_store(root)
    base = f"http://{host}:{port}"
    with stopped_by_signals():
        # a session of its own: its workers are the group stopped at the end, whatever stops this process
        server = subprocess.Popen(["mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root",
                                   artifact_root, "--host", host, "--port", str(port)], start_new_session=True)
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
            print(f"MLflow UI of {root / 'mlruns'}: {url}")
            others = [e for e in client.search_experiments() if e.experiment_id != experiment_id and
                      (e.name != "Default" or client.search_runs([e.experiment_id], max_results=1))]
            for other in sorted(others, key=lambda e: e.name):  # the other pipelines' (gptcore ui --experiment)
                print(f"  also experiment {other.name}: {chart_view_url(base, other.experiment_id)}")
            sys.stdout.flush()
            if open_browser:
                webbrowser.open(url)
            server.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_group(server)


def refuse_a_taken_port(host: str, port: int) -> None:
    with socket.socket() as probe:
        # as mlflow ui binds: a closed connection in TIME_WAIT does not take the port, a listener does
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise TrackingUnavailable(f"port {port} on {host} is taken ({error.strerror}): another server (an "
                                      "mlflow ui?) listens there; stop it or choose another --port") from None


@contextlib.contextmanager
def stopped_by_signals():
    """SIGTERM and SIGHUP (a service manager, a closed terminal) end the block as Ctrl-C does."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_group(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (mlflow ui and its workers), SIGKILL to any left after 30 s."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, signum)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            server.poll()  # reaps mlflow ui itself: a zombie would keep the group alive
            try:
                os.killpg(server.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
