"""Model folders in and out: atomic writes, and the ``sparsity.json`` beside the weights."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from torch import nn

from obert.errors import ObertError
from obert.fs import write_error, writing

MARKER = ".obert-output"  # in every folder obert writes: --overwrite replaces only those


def mark_output(folder: str | os.PathLike, command: str) -> None:
    """Say in ``folder`` that obert wrote it (version, command, time): what lets a later
    ``--overwrite`` replace it."""
    from obert import __version__

    stamp = {"obert_version": __version__, "command": command,
             "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (Path(folder) / MARKER).write_text(json.dumps(stamp) + "\n")


def check_output(path: str | os.PathLike, overwrite: bool, file: bool = False,
                 inputs: Iterable[str | os.PathLike | None] = (),
                 flag: str = "--output") -> Path:
    """Refuse an output location that cannot take a new folder (``file``: a new file); call
    before any work starts. The one statement of the rule for every command's --output:
    ``overwrite`` replaces only what obert wrote (a folder with ``MARKER``, an empty folder, an
    ONNX file with obert's metadata), never the run's ``inputs`` or a folder holding one, the
    current folder, home, or a folder holding either. ``flag`` names the path in messages."""
    if not str(path):
        raise ObertError(f"{flag} is empty: name the {'file' if file else 'folder'} to write")
    path = Path(path)
    try:
        _check_output(path, overwrite, file, inputs, flag)
    except OSError as e:  # a name too long, a folder that cannot be read, ...
        raise write_error(path, e) from None
    return path


def _check_output(path: Path, overwrite: bool, file: bool,
                  inputs: Iterable[str | os.PathLike | None], flag: str) -> None:
    if path.is_symlink():  # rename and rmtree act on the link, not on where it points
        target = os.readlink(path)
        gone = "" if path.exists() else ", which does not exist"
        raise ObertError(f"{flag} {path} is a link to {target}{gone}: obert writes no output "
                         "through a link; choose another --output")
    if file and path.is_dir():
        raise ObertError(f"{flag} {path} is a folder: name the file to write")
    if not file and path.exists() and not path.is_dir():
        raise ObertError(f"{flag} {path} is a file, not a folder: remove it or choose another "
                         "--output")
    if path.exists():
        _check_not_holding(path, inputs, flag)
        if not overwrite:
            what = "" if file else "output folder "
            raise ObertError(f"{what}{path} already exists: choose another --output or pass "
                             "--overwrite")
        if not _written_by_obert(path, file):
            raise ObertError(f"{flag} {path} was not written by obert: delete it yourself or "
                             "choose another --output")
    if not path.parent.is_dir():
        raise ObertError(f"the parent folder of {flag} {path} does not exist")
    try:  # the one sure test (root passes os.access anywhere): make a folder there, named as
        # long as the temporary folder will be
        os.rmdir(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    except OSError as e:
        long = e.errno == errno.ENAMETOOLONG
        raise write_error(path if long else path.parent, e, inside=not long) from None


def _check_not_holding(path: Path, inputs: Iterable[str | os.PathLike | None],
                       flag: str) -> None:
    """Refuse a ``path`` that is, or holds, the current folder, home or an input."""
    target = {path.resolve(), Path(os.path.abspath(path))}
    here = Path.cwd().resolve()
    if target & {here, *here.parents}:
        raise ObertError(f"{flag} {path} holds the current folder: --overwrite would delete it; "
                         "choose a new folder for --output")
    home = Path(os.path.expanduser("~")).resolve()
    if target & {home, *home.parents}:
        raise ObertError(f"{flag} {path} holds your home folder: --overwrite would delete it; "
                         "choose a new folder for --output")
    for given in inputs:
        if given is None or not str(given) or not os.path.exists(given):
            continue  # a hub id, or an option not given
        for form in {Path(given).resolve(), Path(os.path.abspath(given))}:
            if target & {form, *form.parents}:
                how = "is an input" if form in target else f"holds an input ({given})"
                raise ObertError(f"{flag} {path} {how} of this run: --overwrite would delete "
                                 "it; choose another --output")


def _written_by_obert(path: Path, file: bool) -> bool:
    """A folder with obert's marker, an empty folder, or an ONNX file with obert's metadata."""
    if not file:
        return (path / MARKER).is_file() or not any(path.iterdir())
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX (or onnx missing): not a file obert wrote
        return False
    return any(p.key.startswith("obert.") for p in model.metadata_props)


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
def atomic_output(path: str | os.PathLike, overwrite: bool = False, log=None,
                  command: str = "", inputs: Iterable[str | os.PathLike | None] = ()
                  ) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` (marked as obert's, ``mark_output``); rename it
    to ``path`` only on success.

    Any failure removes the temporary folder, and a file-system error (a full disk, ...) is one
    line naming ``path`` (``obert.fs``); one left by a killed run (SIGKILL) is swept by the
    next run into the same place. The result follows the umask like a plain folder. An output
    being replaced is moved aside first and removed only once the new one is in place."""
    path = check_output(path, overwrite, inputs=inputs)
    sweep_stale(path, log)
    with writing(path):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    old = tmp.with_name(tmp.name + "-old")  # swept like the temporary folder if killed
    try:
        with writing(path):
            mark_output(tmp, command)
            yield tmp
            publish_permissions(tmp)
            if path.exists():
                os.replace(path, old)
            try:
                os.replace(tmp, path)
            except OSError:
                if old.exists():
                    os.replace(old, path)
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def save_model(model, tokenizer, folder: Path, info: dict | None = None,
               metrics: dict | None = None) -> None:
    """Write a plain Hugging Face folder (safetensors, config, tokenizer) plus ``sparsity.json``
    and its model card ``README.md`` (``obert.card``: how it was made, ``metrics`` when the
    command scored it, how to run it)."""
    from obert.card import write_card
    from obert.finite import check_finite

    check_finite(model, "the model to be written", "nothing is written: the run diverged "
                 "(train with a lower learning rate or without --fp16; one-shot: a larger --damp)")
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
