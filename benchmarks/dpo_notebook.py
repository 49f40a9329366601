"""The book's DPO notebook (dpo-from-scratch.ipynb, in the mirror's reference/) as the reference the preference tests
and benchmark run: its cells that define the named functions are executed as they are, nothing of them copied."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

DEFINES = ("format_input", "PreferenceDataset", "custom_collate_fn", "compute_dpo_loss", "compute_logprobs",
           "compute_dpo_loss_batch", "compute_dpo_loss_loader", "evaluate_dpo_loss_loader", "train_model_dpo_simple")


def notebook_functions(mirror: Path) -> dict:
    """The notebook's namespace after its defining cells and its split cell (run on the mirror's
    instruction-data-with-preference.json): its functions by name, and train_data, val_data, test_data."""
    cells = [''.join(cell["source"]) for cell in
             json.loads((mirror / "reference" / "dpo-from-scratch.ipynb").read_text())["cells"]
             if cell["cell_type"] == "code"]
    # train_model_dpo_simple prints a sample of the notebook's global `model` after each epoch: nothing to compare
    sys.modules["previous_chapters"] = types.SimpleNamespace(generate_and_print_sample=lambda **_: None)
    namespace = {"model": None}
    try:
        for name in DEFINES:
            (cell,) = [c for c in cells if f"def {name}(" in c or f"class {name}(" in c]
            exec(cell, namespace)
    finally:
        del sys.modules["previous_chapters"]
    namespace["data"] = json.loads((mirror / "data" / "instruction-data-with-preference.json").read_text())
    (split,) = [c for c in cells if "train_portion = " in c]
    exec(split, namespace)
    return namespace
