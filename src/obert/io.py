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


def check_output(path: str | os.PathLike, overwrite: bool, file: bool = False) -> Path:
    """Refuse an output location that cannot take a new folder (``file``: a new file); call
    before any work starts. The one statement of the rule for every command's --output."""
    path = Path(path)
    if file and path.is_dir():
        raise ObertError(f"--output {path} is a folder: name the file to write")
    if not file and path.exists() and not path.is_dir():
        raise ObertError(f"--output {path} is a file, not a folder: choose another --output")
    if not file and overwrite and path.is_dir():
        here = Path.cwd().resolve()
        if path.resolve() in (here, *here.parents, Path.home().resolve()):
            raise ObertError(f"--output {path} holds the current folder (or is your home): "
                             "--overwrite would delete it; choose a new folder for --output")
    if path.exists() and not overwrite:
        what = "" if file else "output folder "
        raise ObertError(f"{what}{path} already exists: choose another --output or pass "
                         "--overwrite")
    if not path.parent.is_dir():
        raise ObertError(f"the parent folder of --output {path} does not exist")
    try:  # the one sure test (root passes os.access anywhere): make a folder there
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.probe-", dir=path.parent))
    except OSError as e:
        raise ObertError(f"cannot write in {path.parent} ({e.strerror or type(e).__name__}): "
                         "choose another --output") from None
    return path


def sweep_stale(path: Path, log=None) -> None:
    """Remove temporary folders beside ``path`` left by runs that were killed (their process is
    gone): ``.NAME.tmp-PID-*``."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name[len(f".{path.name}.tmp-"):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)) and tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            if log is not None:
                log(f"removed {tmp}, left by an interrupted run (process {pid})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_permissions(folder: Path) -> None:
    """Folders 0777 and files 0666 less the umask (0755/0644 under 022), as ``mkdir`` and
    ``open`` would give; ``mkdtemp`` makes 0700 and some writers 0600."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)
    os.chmod(folder, 0o777 & ~mask)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False, log=None) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; rename it to ``path`` only on success.

    Any failure removes the temporary folder; one left by a killed run (SIGKILL) is swept by
    the next run into the same place. The result follows the umask like a plain folder."""
    path = check_output(path, overwrite)
    sweep_stale(path, log)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
        publish_permissions(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_model(model, tokenizer, folder: Path, info: dict | None = None,
               metrics: dict | None = None) -> None:
    """Write a plain Hugging Face folder (safetensors, config, tokenizer) plus ``sparsity.json``
    and its model card ``README.md`` (``obert.card``: how it was made, ``metrics`` when the
    command scored it, how to run it)."""
    from obert.card import write_card

    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    if info is not None:
        (folder / "sparsity.json").write_text(json.dumps(info, indent=2) + "\n")
    config = getattr(model, "config", None)
    write_card(folder, info, metrics, config.to_dict() if hasattr(config, "to_dict") else None)


QUANT_FILE = "quantization.safetensors"


def save_weight_scales(folder: Path, scales: dict) -> None:
    """QAT's per-row weight scales, ``{module}.weight_scale`` in safetensors."""
    from safetensors.torch import save_file

    save_file({f"{n}.weight_scale": s.contiguous() for n, s in scales.items()},
              str(Path(folder) / QUANT_FILE))


def load_weight_scales(folder: str | os.PathLike) -> dict | None:
    """The trained weight scales of a QAT model folder (module name -> s_w), or None."""
    path = Path(folder) / QUANT_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        data = load_file(str(path))
    except Exception as e:  # safetensors raises its own types on a damaged file
        raise ObertError(f"{path} does not load ({type(e).__name__}): the QAT output is "
                         "damaged; rerun the quantization step") from None
    return {k.removesuffix(".weight_scale"): v for k, v in data.items()}


def weight_scales_of(model: nn.Module) -> dict | None:
    """The trained INT8 scales of the local folder ``model`` was loaded from
    (``config._name_or_path``), or None: how compile and export find a QAT model's scales."""
    where = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return load_weight_scales(where) if where and os.path.isdir(where) else None
