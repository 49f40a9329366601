"""What the README's grid of 4 experiments costs on disk: a fresh tiny-preset project made from a
checkout (this one, or --repo for another revision, e.g. a `git worktree` of an older commit), the data
stages built, `du` of the whole project before and after the grid, and the size of one model.

    python benchmarks/disk_use.py [--repo PATH] [--steps 12]

The checkout's own gptcore runs the stages (PYTHONPATH), so an older revision is measured as it was.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent,
                        help="the checkout to build the project from (default: this one)")
    parser.add_argument("--steps", type=int, default=12, help="training steps of each experiment (default: 12)")
    args = parser.parse_args()
    repo = args.repo.resolve()
    sys.path.insert(0, str(repo / "tests"))
    import conftest

    conftest.REPO = repo
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as folder:
        project = conftest.make_project(Path(folder))
        conftest.run(["dvc", "repro", "tokenize"], project)
        before = disk_use(project)
        conftest.run(["dvc", "exp", "run", "--queue", "-S", "train.peak_lr=choice(3e-4,1e-3)", "-S",
                      "train.seed=range(1,3)", "-S", f"train.max_steps={args.steps}", "-S", "train.eval_freq=6"],
                     project)
        with open(Path(folder) / "queue.log", "w") as log:  # the workers keep captured streams open
            subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=project, stdout=log, stderr=subprocess.STDOUT)
        while any(state in (status := conftest.run(["dvc", "queue", "status"], project)) for state in
                  ("Queued", "Running")):
            time.sleep(5)
        model = next(project.rglob("model.safetensors")).stat().st_size
        print(json.dumps({"repo": str(repo), "succeeded": status.count("Success"), "grew_mib":
                          (disk_use(project) - before) / 2**20, "model_mib": model / 2**20}))


def disk_use(project: Path) -> int:
    return int(subprocess.run(["du", "-s", "-B1", "."], cwd=project, capture_output=True, text=True,
                              check=True).stdout.split()[0])


if __name__ == "__main__":
    main()
