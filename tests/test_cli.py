"""The ``obert`` command line end to end on a tiny random BERT: finetune -> oneshot -> evaluate,
and bad input, which must end in exit code 2, one line on stderr and nothing written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from obert.cli import main

# The tiny model's 12 target Linears: 2 layers x (q, k, v, attn-out, intermediate, output).
TARGET_SUFFIXES = (
    "attention.self.query", "attention.self.key", "attention.self.value",
    "attention.output.dense", "intermediate.dense", "output.dense",
)
EXPECTED_TARGETS = {
    f"bert.encoder.layer.{i}.{s}.weight" for i in range(2) for s in TARGET_SUFFIXES
}
SST2_DEV_ROWS = 872

# One-shot variants of the round trip: extra CLI flags, group size k.
PRUNE_VARIANTS: dict[str, tuple[list[str], int]] = {
    "obert": (["--method", "obert", "--num-grads", "8", "--grad-batch-size", "4"], 1),
    # no --fisher-block-size: oBERT takes the paper's B = 32 for 4-blocks, magnitude needs none
    "obert-block4": (
        ["--method", "obert", "--num-grads", "8", "--grad-batch-size", "4", "--mask", "block4"],
        4,
    ),
    "magnitude": (["--method", "magnitude"], 1),
    "magnitude-block4": (["--method", "magnitude", "--mask", "block4"], 4),
}


def cli(*args: object) -> int:
    return main([str(a) for a in args])


def leftovers(parent: Path, name: str) -> list[str]:
    """Temporary folders that an interrupted atomic write would leave beside the output."""
    return sorted(p.name for p in parent.glob(f".{name}.tmp-*"))


# ------------------------------------------------------------------------------ round trip


@pytest.fixture(scope="module")
def finetuned(tiny_model_dir: Path, glue_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("roundtrip") / "finetuned"
    rc = cli("finetune", "--model", tiny_model_dir, "--task", "sst2", "--data-dir", glue_dir,
             "--max-train-samples", 64, "--epochs", 1, "--output", out, "--quiet")
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def pruned(finetuned: Path, glue_dir: Path) -> dict[str, Path]:
    """The fine-tuned model pruned to 50% once per variant, beside it."""
    outs = {}
    for name, (flags, _) in PRUNE_VARIANTS.items():
        out = finetuned.parent / f"pruned-{name}"
        # --max-train-samples: only 8 x 4 rows feed the Fisher; don't tokenize all 67k.
        rc = cli("oneshot", "--model", finetuned, "--task", "sst2", "--data-dir", glue_dir,
                 "--sparsity", 0.5, *flags, "--max-train-samples", 64, "--output", out, "--quiet")
        assert rc == 0, name
        outs[name] = out
    return outs


def _assert_hf_folder(folder: Path) -> dict:
    for f in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
              "sparsity.json"):
        assert (folder / f).is_file(), f"{folder.name} lacks {f}"
    assert not list(folder.glob("*.bin")), "pickled weights must never be written"
    assert leftovers(folder.parent, folder.name) == []
    return json.loads((folder / "sparsity.json").read_text())


def test_finetune_output(finetuned: Path) -> None:
    info = _assert_hf_folder(finetuned)
    assert info["method"] == "dense-finetune"
    assert info["settings"]["epochs"] == 1
    assert info["data"]["max_train_samples"] == 64 and info["data"]["task"] == "sst2"
    assert info["train"]["steps"] == 2  # 64 rows / batch 32
    assert set(info["tensors"]) == EXPECTED_TARGETS
    assert info["global_sparsity"] < 0.01  # dense
    evals = json.loads((finetuned / "eval_results.json").read_text())
    assert evals["n"] == SST2_DEV_ROWS and 0.0 <= evals["accuracy"] <= 1.0
    config = json.loads((finetuned / "config.json").read_text())
    assert config["finetuning_task"] == "sst2"
    assert config["id2label"] == {"0": "negative", "1": "positive"}


@pytest.mark.parametrize("variant", list(PRUNE_VARIANTS))
def test_oneshot_sparsity_report(pruned: dict[str, Path], variant: str) -> None:
    flags, k = PRUNE_VARIANTS[variant]
    info = _assert_hf_folder(pruned[variant])
    assert set(info["tensors"]) == EXPECTED_TARGETS
    total = sum(t["shape"][0] * t["shape"][1] for t in info["tensors"].values())
    assert info["num_weights"] == total
    assert info["num_zeros"] == sum(t["zeros"] for t in info["tensors"].values())
    # Global 50% over all targets, to within one weight (one group of k).
    assert abs(info["num_zeros"] - 0.5 * total) <= k
    assert info["global_sparsity"] == pytest.approx(info["num_zeros"] / total)
    # The run is reproducible from what was recorded.
    method = flags[flags.index("--method") + 1]
    s = info["settings"]
    assert info["method"] == method and s["method"] == method
    assert s["sparsity"] == 0.5
    assert s["mask"] == ("block4" if k == 4 else "unstructured")
    if method == "obert":
        assert s["fisher"]["num_grads"] == 8 and s["fisher"]["grad_batch_size"] == 4
        assert s["fisher_block_size"] == (32 if k == 4 else 50)
        assert s["fisher"]["damp"] == pytest.approx(1e-7)
    assert s["max_seq_length"] == 128 and s["scope"] == "global"
    assert info["source_model"].endswith("finetuned")
    assert info["data"]["task"] == "sst2"


@pytest.mark.parametrize("variant", list(PRUNE_VARIANTS))
def test_oneshot_touches_only_targets(finetuned: Path, pruned: dict[str, Path], variant: str) -> None:
    before = load_file(finetuned / "model.safetensors")
    after = load_file(pruned[variant] / "model.safetensors")
    assert set(before) == set(after)
    for name in set(before) - EXPECTED_TARGETS:
        assert torch.equal(before[name], after[name]), name
    if variant.startswith("magnitude"):
        # No weight update: the survivors are untouched.
        kept = torch.cat([before[n][after[n] != 0] for n in EXPECTED_TARGETS])
        assert torch.equal(kept, torch.cat([after[n][after[n] != 0] for n in EXPECTED_TARGETS]))
        if variant == "magnitude":  # the pruned weights are the globally smallest |w|
            gone = torch.cat([before[n][after[n] == 0] for n in EXPECTED_TARGETS])
            assert gone.abs().max() <= kept.abs().min()
    else:
        # The OBS update moves surviving weights to compensate.
        assert any(not torch.equal(before[n][after[n] != 0], after[n][after[n] != 0])
                   for n in EXPECTED_TARGETS)


def test_oneshot_layer_scope_recomputations_evaluate(tiny_finetuned_dir: Path, glue_dir: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "layerwise"
    rc = cli("oneshot", "--model", tiny_finetuned_dir, "--task", "sst2", "--data-dir", glue_dir,
             "--sparsity", 0.5, "--scope", "layer", "--recomputations", 2, "--num-grads", 4,
             "--grad-batch-size", 4, "--max-train-samples", 32, "--evaluate",
             "--output", out, "--quiet")
    assert rc == 0
    info = _assert_hf_folder(out)
    assert info["settings"]["scope"] == "layer" and info["settings"]["recomputations"] == 2
    # --scope layer: every tensor, not just the total, is at the target.
    for name, t in info["tensors"].items():
        numel = t["shape"][0] * t["shape"][1]
        assert abs(t["zeros"] - 0.5 * numel) <= 1, name
    evals = json.loads((out / "eval_results.json").read_text())  # written by --evaluate
    assert evals["n"] == SST2_DEV_ROWS and evals["task"] == "sst2"


# Run in a fresh interpreter: the saved folders must be plain Hugging Face folders.
_LOAD_WITHOUT_OBERT = r"""
import json, sys
from transformers import AutoModelForSequenceClassification
out = {}
for folder in sys.argv[1:]:
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    sd = model.state_dict()
    names = json.load(open(folder + "/sparsity.json"))["tensors"]
    zeros, partial = {}, {}
    for n in names:
        z = sd[n] == 0
        zeros[n] = int(z.sum())
        per_group = z.reshape(-1, 4).sum(-1)  # groups of 4 along the input dimension
        partial[n] = int(((per_group > 0) & (per_group < 4)).sum())
    out[folder] = {"zeros": zeros, "partial_groups": partial,
                   "num_labels": model.config.num_labels}
print(json.dumps({"obert_imported": "obert" in sys.modules, "folders": out}))
"""


@pytest.mark.slow  # trains or starts processes: make test runs it, test-fast does not
def test_outputs_load_without_obert(finetuned: Path, pruned: dict[str, Path]) -> None:
    folders = [finetuned, *pruned.values()]
    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_OBERT, *map(str, folders)],
        capture_output=True, text=True, timeout=300, cwd=finetuned.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["obert_imported"] is False
    for name, folder in [("finetuned", finetuned), *pruned.items()]:
        loaded = result["folders"][str(folder)]
        info = json.loads((folder / "sparsity.json").read_text())
        assert loaded["num_labels"] == 2
        # Zeros in the reloaded weights are exactly those sparsity.json reports.
        assert loaded["zeros"] == {n: t["zeros"] for n, t in info["tensors"].items()}, name
        if name == "obert-block4":
            assert sum(loaded["partial_groups"].values()) == 0, "block4 left partial groups"
        elif name == "obert":
            # Unstructured: groups of 4 are not pruned as units.
            assert sum(loaded["partial_groups"].values()) > 0


def test_evaluate_json(pruned: dict[str, Path], glue_dir: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = pruned["obert"]
    capsys.readouterr()
    rc = cli("evaluate", "--model", folder, "--task", "sst2", "--data-dir", glue_dir,
             "--json", "--quiet")
    out = capsys.readouterr().out
    assert rc == 0
    result = json.loads(out)  # the whole of stdout is one JSON object
    assert out.count("\n") == 1
    assert {"task", "accuracy", "n"} <= set(result)
    assert result["task"] == "sst2" and result["split"] == "dev"
    assert result["n"] == SST2_DEV_ROWS
    assert 0.0 <= result["accuracy"] <= 1.0
    info = json.loads((folder / "sparsity.json").read_text())
    assert result["sparsity"] == pytest.approx(info["global_sparsity"])


def test_evaluate_table(finetuned: Path, glue_dir: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    rc = cli("evaluate", "--model", finetuned, "--task", "sst2", "--data-dir", glue_dir,
             "--quiet", "--batch-size", 128)
    out = capsys.readouterr().out
    assert rc == 0
    rows = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert rows["task"] == "sst2" and rows["n"] == str(SST2_DEV_ROWS)
    # The dense model's dev score matches what finetune recorded.
    evals = json.loads((finetuned / "eval_results.json").read_text())
    assert float(rows["accuracy"]) == pytest.approx(evals["accuracy"], abs=1e-4)


# ------------------------------------------------------------------------------- bad input

def _assert_one_error_line(stderr: str, expected: str, allowed_log: tuple[str, ...] = ()) -> None:
    lines = stderr.strip("\n").splitlines()
    assert "Traceback" not in stderr
    errors = [line for line in lines if line.startswith("obert: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    assert expected in errors[0], errors[0]
    others = [line for line in lines[:-1] if not line.startswith(allowed_log or ("\0",))]
    assert others == [], f"stderr should be the error line alone, got {lines}"


def test_existing_output_needs_overwrite(tiny_model_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    argv = ["oneshot", "--model", str(tiny_model_dir), "--task", "sst2", "--sparsity", "0.3",
            "--method", "magnitude", "--output", str(out), "--quiet"]
    capsys.readouterr()
    assert main(argv) == 2
    _assert_one_error_line(capsys.readouterr().err, "--overwrite")
    assert sorted(os.listdir(out)) == ["keep.txt"]
    assert leftovers(tmp_path, out.name) == []
    # --overwrite replaces only a folder obert wrote (or an empty one): keep.txt is the user's
    assert main([*argv, "--overwrite"]) == 2
    _assert_one_error_line(capsys.readouterr().err, "was not written by obert")
    assert sorted(os.listdir(out)) == ["keep.txt"]
    (out / "keep.txt").unlink()

    # A temporary folder left by a killed run (its process is gone) is swept, with a line.
    stale = tmp_path / ".pruned.tmp-999999999-abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half a model")
    old_mask = os.umask(0o022)
    try:
        assert main([*argv, "--overwrite"]) == 0
    finally:
        os.umask(old_mask)
    assert "left by an interrupted run" in capsys.readouterr().err
    assert not (out / "keep.txt").exists()
    info = _assert_hf_folder(out)
    assert abs(info["num_zeros"] - 0.3 * info["num_weights"]) <= 1
    assert sorted(os.listdir(tmp_path)) == ["pruned"]
    # The output follows the umask like any folder (mkdtemp alone would give 0700).
    assert out.stat().st_mode & 0o777 == 0o755
    assert all(f.stat().st_mode & 0o777 == 0o644 for f in out.iterdir() if f.is_file())


def test_model_folder_without_tokenizer_is_refused(tiny_model_dir: Path, glue_dir: Path,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / f, folder / f)
    capsys.readouterr()
    rc = cli("evaluate", "--model", folder, "--task", "sst2", "--data-dir", glue_dir, "--quiet")
    assert rc == 2, "scored SST-2 with a tokenizer that maps every word to [UNK]"
    _assert_one_error_line(capsys.readouterr().err, "tokenizer")


def test_overwrite_never_deletes_the_current_folder_or_its_parents(tmp_path, monkeypatch, capsys):
    """--overwrite replaces an output folder, never the folder the command runs in or one
    that holds it: one line, exit 2, every file still there."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    monkeypatch.chdir(work)
    for out in (".", str(work), str(tmp_path)):
        capsys.readouterr()
        assert main(["drop-layers", "--model", "no-such-model", "--keep", "0", "--output", out,
                     "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert "holds the current folder" in err and "\n" not in err
        assert (work / "keep.txt").read_text() == "x"
