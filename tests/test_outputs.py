"""Outputs (issue 24): --overwrite replaces only what obert wrote, and the file system's errors
are one line. Every writer (finetune, oneshot, prune, drop-layers, export) meets a full disk:
injected (an OSError from the save) and, where the machine lets the test mount one, real (a
1 MiB tmpfs that the tiny model's 4 MB of weights overflow). Each time: exit 2, one line naming
the path and the cause, no temporary folder, no checkpoints folder, nothing else changed."""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import torch
import transformers

from obert.cli import main
from obert.errors import ObertError
from obert.fs import as_os_error
from obert.io import MARKER, check_output, mark_output

ENOSPC = OSError(errno.ENOSPC, "No space left on device")
PRUNE_RECIPE = """epochs: 1
batch_size: 8
max_seq_length: 32
pruning: {method: magnitude, init_sparsity: 0.5, final_sparsity: 0.5, start_epoch: 0.5,
          end_epoch: 0.5, update_frequency: 1}
"""


def _run(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv] + ["--quiet"])
    return rc, capsys.readouterr().err


def _one_line(err: str, *pieces: str) -> None:
    """One error line, the last (a write that fails after the work follows its log lines)."""
    lines = err.strip("\n").splitlines()
    assert "Traceback" not in err
    errors = [line for line in lines if line.startswith("obert: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for piece in pieces:
        assert piece in errors[0], errors[0]


def _tree(folder: Path) -> dict:
    """Every entry under ``folder``: a file's digest, "dir" or "link"."""
    return {str(p.relative_to(folder)): "link" if p.is_symlink() else "dir" if p.is_dir()
            else hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))}


def _writers(ft: Path, out: Path) -> dict[str, list]:
    """The fast writers' argv (no training), each writing ``out`` (export: ``out``.onnx)."""
    return {
        "drop-layers": ["drop-layers", "--model", ft, "--keep", "0", "--output", out],
        "oneshot": ["oneshot", "--model", ft, "--task", "sst2", "--sparsity", "0.5", "0.7",
                    "--method", "magnitude", "--output", out],
        "export": ["export", "--model", ft, "--output", out.with_suffix(".onnx")],
    }


def _full_disk(monkeypatch, error: OSError = ENOSPC) -> None:
    """Every model save and ONNX export writes a little, then fails with ``error``."""
    def save(self, folder, *a, **k):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half a model")
        raise error

    def export(model, args, f, *a, **k):
        Path(f).write_bytes(b"half a graph")
        raise error

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save)
    monkeypatch.setattr(torch.onnx, "export", export)


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 1 MiB tmpfs holding one file of the user's; skipped where mount is not allowed."""
    folder = tmp_path / "small"
    folder.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("no mount command")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        (folder / "keep.txt").write_text("the user's")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30)


# -------------------------------------------------------------------------- the overwrite rule

def test_outputs_carry_the_marker_and_overwrite_replaces_them(tiny_finetuned_dir, tmp_path,
                                                              capsys):
    out = tmp_path / "pruned"
    argv = _writers(tiny_finetuned_dir, out)["oneshot"]
    assert _run(capsys, *argv)[0] == 0
    # the folder and each sparsity's sub-folder are obert's (the marker says who and when)
    for folder in (out, out / "sparsity-0.50", out / "sparsity-0.70"):
        stamp = json.loads((folder / MARKER).read_text())
        assert stamp["command"] == "oneshot" and stamp["obert_version"] and stamp["time"]
    # so --overwrite may replace it, and one of its sub-folders on its own
    assert _run(capsys, *argv, "--overwrite")[0] == 0
    sub = out / "sparsity-0.50"
    assert _run(capsys, "drop-layers", "--model", tiny_finetuned_dir, "--keep", "1", "--output",
                sub, "--overwrite")[0] == 0
    assert json.loads((sub / MARKER).read_text())["command"] == "drop-layers"
    assert (out / "sparsity-0.70" / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]  # nothing left beside it


def test_overwrite_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine, theirs, empty = tmp_path / "mine", tmp_path / "theirs", tmp_path / "empty"
    for folder in (mine, theirs, empty):
        folder.mkdir()
    mark_output(mine, "finetune")
    (theirs / "thesis.tex").write_text("years of work")
    assert check_output(mine, True) == mine and check_output(empty, True) == empty
    with pytest.raises(ObertError, match="was not written by obert"):
        check_output(theirs, True)
    with pytest.raises(ObertError, match="already exists"):
        check_output(mine, False)
    # an input of the run, or a folder holding one, even when obert wrote it
    (mine / "model.safetensors").write_text("x")
    with pytest.raises(ObertError, match="is an input of this run"):
        check_output(mine, True, inputs=[None, "no-org/hub-id", mine])
    with pytest.raises(ObertError, match=r"holds an input \(.*model.safetensors\)"):
        check_output(mine, True, inputs=[mine / "model.safetensors"])
    with pytest.raises(ObertError, match="--output is empty"):
        check_output("", True)
    # home and the folders holding it, wherever the command runs
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(mine)
    for folder in (home, home.parent):
        with pytest.raises(ObertError, match="holds your home folder"):
            check_output(folder, True)
    assert (theirs / "thesis.tex").read_text() == "years of work"


def test_export_overwrites_only_its_own_onnx(tiny_finetuned_dir, tmp_path, capsys):
    export = ["export", "--model", tiny_finetuned_dir, "--check-rows", "2", "--output"]
    out = tmp_path / "m.onnx"
    assert _run(capsys, *export, out)[0] == 0
    assert _run(capsys, *export, out, "--overwrite")[0] == 0  # its metadata says obert wrote it
    other = tmp_path / "other.onnx"
    other.write_bytes(b"someone else's model")
    rc, err = _run(capsys, *export, other, "--overwrite")
    assert rc == 2
    _one_line(err, f"{other} was not written by obert")
    assert other.read_bytes() == b"someone else's model"


# -------------------------------------------------------------------- the file system's errors

def test_errors_inside_other_exception_types():
    where = Path("/")
    rust = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert as_os_error(rust, where).errno == errno.ENOSPC
    torch_open = RuntimeError("[enforce fail at inline_container.cc:747] . open file failed "
                              "with strerror: File name too long")
    assert as_os_error(torch_open, where).errno == errno.ENAMETOOLONG
    assert as_os_error(ENOSPC, where) is ENOSPC
    assert as_os_error(ValueError("a bug"), where) is None
    assert as_os_error(KeyboardInterrupt(), where) is None


@pytest.mark.parametrize("writer", ["drop-layers", "oneshot", "export"])
@pytest.mark.parametrize("error, cause", [(ENOSPC, "no space left on device; free space"),
                                          (PermissionError(errno.EACCES, "Permission denied"),
                                           "permission denied"),
                                          (OSError(errno.EROFS, "Read-only file system"),
                                           "read-only file system")])
def test_a_failed_write_is_one_line_and_leaves_nothing(writer, error, cause, tiny_finetuned_dir,
                                                       tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    (tmp_path / "keep.txt").write_text("the user's")
    before = _tree(tmp_path)
    argv = _writers(tiny_finetuned_dir, out)[writer]
    _full_disk(monkeypatch, error)
    rc, err = _run(capsys, *argv)
    assert rc == 2
    _one_line(err, f"cannot write {argv[-1]}: {cause}")
    assert _tree(tmp_path) == before  # no output, no .out.tmp-*, nothing else touched


def test_a_failed_overwrite_keeps_the_old_output(tiny_finetuned_dir, tmp_path, capsys,
                                                 monkeypatch):
    out = tmp_path / "out"
    argv = _writers(tiny_finetuned_dir, out)["drop-layers"]
    assert _run(capsys, *argv)[0] == 0
    before = _tree(tmp_path)
    _full_disk(monkeypatch)
    rc, err = _run(capsys, *argv, "--overwrite")
    assert rc == 2
    _one_line(err, f"cannot write {out}: no space left on device")
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("writer", ["drop-layers", "oneshot", "export"])
def test_a_real_full_disk(writer, tiny_finetuned_dir, small_fs, capsys):
    argv = _writers(tiny_finetuned_dir, small_fs / "out")[writer]
    before = _tree(small_fs)
    rc, err = _run(capsys, *argv)
    assert rc == 2
    _one_line(err, f"cannot write {argv[-1]}: no space left on device")
    assert _tree(small_fs) == before


def test_a_read_only_file_system(tiny_finetuned_dir, small_fs, capsys):
    done = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot remount read-only here")
    rc, err = _run(capsys, *_writers(tiny_finetuned_dir, small_fs / "out")["drop-layers"])
    assert rc == 2
    _one_line(err, f"cannot write in {small_fs}: read-only file system")
    assert _tree(small_fs) == {"keep.txt": hashlib.sha1(b"the user's").hexdigest()}


# -------------------------------------------------------- the writers that train (slow)

def _finetune(model: Path, glue: Path, out: Path) -> list:
    return ["finetune", "--model", model, "--task", "sst2", "--data-dir", glue,
            "--max-train-samples", "16", "--epochs", "1", "--output", out]


def _prune(tmp_path: Path, ft: Path, glue: Path, out: Path, *extra) -> list:
    recipe = tmp_path / "recipe.yaml"
    if not recipe.exists():
        recipe.write_text(PRUNE_RECIPE)
    return ["prune", "--recipe", recipe, "--model", ft, "--task", "sst2", "--data-dir", glue,
            "--max-train-samples", "32", "--save-steps", "1", "--output", out, *extra]


@pytest.mark.slow  # trains
def test_finetune_on_a_full_disk(tiny_model_dir, glue_dir, tmp_path, small_fs, capsys,
                                 monkeypatch):
    before = _tree(small_fs)
    rc, err = _run(capsys, *_finetune(tiny_model_dir, glue_dir, small_fs / "out"))
    assert rc == 2
    _one_line(err, f"cannot write {small_fs / 'out'}: no space left on device")
    assert _tree(small_fs) == before
    (tmp_path / "keep.txt").write_text("the user's")
    before = _tree(tmp_path)
    _full_disk(monkeypatch)
    rc, err = _run(capsys, *_finetune(tiny_model_dir, glue_dir, tmp_path / "out"))
    assert rc == 2
    _one_line(err, f"cannot write {tmp_path / 'out'}: no space left on device")
    assert _tree(tmp_path) == before


@pytest.mark.slow  # trains
def test_prune_on_a_full_disk_leaves_no_checkpoints(tiny_finetuned_dir, glue_dir, tmp_path,
                                                    small_fs, capsys, monkeypatch):
    # real: the first checkpoint overflows the tmpfs
    before = _tree(small_fs)
    out = small_fs / "out"
    rc, err = _run(capsys, *_prune(tmp_path, tiny_finetuned_dir, glue_dir, out))
    assert rc == 2
    _one_line(err, f"cannot write {out}.checkpoints: no space left on device")
    assert _tree(small_fs) == before
    # injected into the final save, after complete checkpoints: they go too
    work = tmp_path / "work"
    work.mkdir()
    original = transformers.PreTrainedModel.save_pretrained

    def final_save_fails(self, folder, *a, **k):
        if ".checkpoints" not in str(folder):
            raise ENOSPC
        return original(self, folder, *a, **k)

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", final_save_fails)
    rc, err = _run(capsys, *_prune(tmp_path, tiny_finetuned_dir, glue_dir, work / "out"))
    assert rc == 2
    _one_line(err, f"cannot write {work / 'out'}: no space left on device")
    assert _tree(work) == {}


@pytest.mark.slow  # trains
def test_a_resumed_prune_keeps_the_checkpoints_it_resumed(tiny_finetuned_dir, glue_dir, tmp_path,
                                                          capsys, monkeypatch):
    from obert.training.gradual import MaskedPruning

    class Killed(KeyboardInterrupt):
        pass

    original = MaskedPruning.on_save

    def killed_after_first(self, args, state, control, **kw):
        original(self, args, state, control, **kw)
        raise Killed

    out = tmp_path / "out"
    argv = _prune(tmp_path, tiny_finetuned_dir, glue_dir, out)
    monkeypatch.setattr(MaskedPruning, "on_save", killed_after_first)
    assert _run(capsys, *argv)[0] == 130
    monkeypatch.setattr(MaskedPruning, "on_save", original)
    work = Path(f"{out}.checkpoints")
    assert (work / MARKER).is_file() and (work / "checkpoint-1").is_dir()
    before = _tree(work)
    _full_disk(monkeypatch)
    rc, err = _run(capsys, *argv, "--resume")
    assert rc == 2
    _one_line(err, "no space left on device")
    assert not out.exists() and (work / "checkpoint-1" / "obert_complete").is_file()
    assert set(before) <= set(_tree(work))  # the earlier run's checkpoints are all there
    monkeypatch.undo()
    assert _run(capsys, *argv, "--resume")[0] == 0  # and --resume still finishes the run
    assert (out / MARKER).is_file() and not work.exists()
