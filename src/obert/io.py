"""Model folders in and out: atomic writes, and the ``sparsity.json`` beside the weights."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from obert.errors import ObertError


def check_output(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an existing output folder unless ``overwrite``; call before any work starts."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ObertError(f"output folder {path} already exists: choose another --output or pass --overwrite")
    if not path.parent.exists():
        raise ObertError(f"the parent folder of --output {path} does not exist")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it to ``path`` only on success."""
    path = check_output(path, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def sparsity_report(model: nn.Module, targets: dict[str, nn.Module]) -> dict:
    """Per-tensor and global sparsity (fraction of exact zeros) of the target weights."""
    per = {}
    zeros = total = 0
    for name, mod in targets.items():
        w = mod.weight
        z = int((w == 0).sum())
        per[f"{name}.weight"] = {"shape": list(w.shape), "sparsity": z / w.numel(), "zeros": z}
        zeros, total = zeros + z, total + w.numel()
    return {"global_sparsity": zeros / total if total else 0.0, "num_weights": total,
            "num_zeros": zeros, "tensors": per}


def save_model(model, tokenizer, folder: Path, info: dict | None = None) -> None:
    """Write a plain Hugging Face folder (safetensors, config, tokenizer) plus ``sparsity.json``."""
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if info is not None:
        (folder / "sparsity.json").write_text(json.dumps(info, indent=2) + "\n")
