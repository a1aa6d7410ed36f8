"""End to end on a real pretrained BERT (MiniLM-L6) and a real slice of SST-2, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from obert.cli import main

pytestmark = pytest.mark.slow


def evaluate(model: Path, glue_dir: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["evaluate", "--model", str(model), "--task", "sst2", "--data-dir", str(glue_dir),
                 "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


def test_finetune_oneshot_evaluate_minilm(minilm_sst2: Path, glue_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    dense = evaluate(minilm_sst2, glue_dir, capsys)
    assert dense["n"] == 872
    assert dense["accuracy"] > 0.75  # 1,024 rows of SST-2 are enough to learn the task

    out = tmp_path / "obert50"
    assert main(["oneshot", "--model", str(minilm_sst2), "--task", "sst2", "--data-dir",
                 str(glue_dir), "--sparsity", "0.5", "--method", "obert", "--num-grads", "32",
                 "--grad-batch-size", "16", "--damp", "1e-6", "--output", str(out),
                 "--quiet"]) == 0
    info = json.loads((out / "sparsity.json").read_text())
    assert len(info["tensors"]) == 36  # 6 layers x (q, k, v, attn out, intermediate, output)
    assert abs(info["num_zeros"] - 0.5 * info["num_weights"]) <= 1
    weights = load_file(out / "model.safetensors")
    for name, t in info["tensors"].items():
        assert int((weights[name] == 0).sum()) == t["zeros"]
    assert (weights["bert.embeddings.word_embeddings.weight"] != 0).float().mean() > 0.99
    pruned = evaluate(out, glue_dir, capsys)
    assert pruned["sparsity"] == pytest.approx(0.5, abs=1e-6)
    # one-shot 50% with OBS updates costs little on MiniLM (the benchmark has the full curve)
    assert pruned["accuracy"] > dense["accuracy"] - 0.05
