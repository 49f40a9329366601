"""Resumable training checkpoints, without ever unpickling objects.

A training checkpoint is a folder step-NNNNNNN/ with the weights (safetensors), the trainer state
(optimizer, schedule position, RNG states, data position, history; read with torch.load(weights_only=True))
and a manifest of sha256 checksums. It is written under a temporary name and renamed whole, then the
`latest` pointer file is replaced atomically, so a crash at any moment leaves the previous checkpoint
usable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model as load_safetensors_into, save_model as save_safetensors

from ..atomic import atomic_write_text, fsync_directory
from ..data.corpus import sha256_file
from ..formats.book import load_plain
from ..formats.model_folder import MODEL_CONFIG, WEIGHTS, CheckpointError
from ..model.gpt import GPT

STATE, MANIFEST, LATEST = "trainer_state.pt", "manifest.json", "latest"


def rng_states() -> dict:
    import random

    import numpy as np

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory, model: GPT, trainer_state: dict, keep: int = 2) -> Path:
    """Write checkpoint step-<step>/ and point `latest` at it; keeps the newest `keep` checkpoints."""
    directory = Path(directory)
    final = directory / f"step-{trainer_state['step']:07d}"
    for leftover in directory.glob(".step-*.tmp-*"):  # from a process killed while writing
        shutil.rmtree(leftover, ignore_errors=True)
    staging = directory / f".{final.name}.tmp-{os.getpid()}"
    staging.mkdir(parents=True)
    try:
        save_safetensors(model, str(staging / WEIGHTS))
        torch.save(trainer_state, staging / STATE)
        (staging / MODEL_CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2))
        manifest = {name: sha256_file(staging / name) for name in (WEIGHTS, STATE, MODEL_CONFIG)}
        (staging / MANIFEST).write_text(json.dumps({"step": trainer_state["step"], "sha256": manifest}))
        for path in staging.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        fsync_directory(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    atomic_write_text(directory / LATEST, final.name)
    for old in sorted(directory.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(directory) -> Path | None:
    """The checkpoint folder `latest` points at, or None when there is no checkpoint."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    folder = Path(directory) / pointer.read_text().strip()
    if not folder.is_dir():
        raise CheckpointError(f"{pointer} points at {folder}, which is missing; delete {directory} to "
                              "start over")
    return folder


def verify_checkpoint(folder: Path) -> None:
    manifest_path = folder / MANIFEST
    try:
        expected = json.loads(manifest_path.read_text())["sha256"]
    except (OSError, ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {folder} has no readable {MANIFEST} ({error}); it is incomplete "
                              f"or corrupted: delete it to start over") from error
    for name, digest in expected.items():
        path = folder / name
        if not path.is_file() or sha256_file(path) != digest:
            raise CheckpointError(f"checkpoint file {path} is missing, truncated or corrupted (sha256 differs "
                                  f"from {manifest_path}); delete the checkpoint folder to start over")


def load_checkpoint(folder, model: GPT) -> dict:
    """Verify checksums, load weights into model, return the trainer state (tensors and plain data only)."""
    folder = Path(folder)
    verify_checkpoint(folder)
    saved_config = json.loads((folder / MODEL_CONFIG).read_text())
    if saved_config != model.config.to_dict():
        changed = {k: (saved_config.get(k), v) for k, v in model.config.to_dict().items()
                   if saved_config.get(k) != v}
        raise CheckpointError(f"checkpoint {folder} was made with another model config (saved, now): "
                              f"{changed}; restore those params or delete the checkpoint to start over")
    load_safetensors_into(model, str(folder / WEIGHTS))
    return load_plain(folder / STATE, CheckpointError, "a resume checkpoint's trainer state here")

