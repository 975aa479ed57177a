"""Models are plain nn.Modules: nothing under pipeline/models/ imports the data layer or Lightning."""

from __future__ import annotations

import ast
from pathlib import Path

MODELS = Path(__file__).resolve().parents[2] / "pipeline" / "models"


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_models_import_neither_the_data_layer_nor_lightning() -> None:
    files = sorted(MODELS.glob("*.py"))
    assert len(files) > 5  # the folder was found
    offending = {
        f"{path.name}: {name}"
        for path in files
        for name in imported_modules(path)
        if name.startswith(("pipeline.data", "pytorch_lightning", "lightning"))
    }
    assert not offending, f"models must take token ids etc. as arguments: {sorted(offending)}"
