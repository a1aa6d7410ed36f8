"""Gradual pruning in the training loop: exact final sparsity, masks held after every
optimizer step, KD, outputs, and kill-and-resume equal to an unbroken run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from obert.cli import main
from obert.io import mark_output
from obert.training.distill import distill_loss, kd_loss
from obert.training.gradual import COMPLETE_FILE, MASKS_FILE, STATE_FILE, MaskedPruning
from obert.training.schedule import lr_at

RECIPE = """
epochs: 3
batch_size: 16
max_seq_length: 64
lr: {{schedule: cyclic_linear, max: 1e-3, min: 1e-4}}
pruning:
  method: {method}
  init_sparsity: 0.5
  final_sparsity: 0.8
  start_epoch: 1
  end_epoch: 2
  update_frequency: 0.5
  mask: {mask}
  fisher: {{num_grads: 4, block_size: 16, grad_batch_size: 4}}
distillation: {{hardness: 1.0, temperature: 2.0}}
"""


def _recipe(tmp_path: Path, method: str = "obert", mask: str = "unstructured") -> Path:
    p = tmp_path / f"{method}-{mask}.yaml"
    p.write_text(RECIPE.format(method=method, mask=mask))
    return p


def _prune(recipe, model, glue_dir, out, *extra, teacher=True) -> int:
    # The tiny model was never fine-tuned by obert: name it as the (random) teacher.
    kd = ["--teacher", str(model)] if teacher else []
    return main(["prune", "--recipe", str(recipe), "--model", str(model), "--task", "sst2",
                 "--data-dir", str(glue_dir), "--max-train-samples", "128", "--output", str(out),
                 "--logging-steps", "2", "--save-steps", "4", "--quiet", *kd, *extra])


def _targets(state: dict) -> dict:
    return {k: v for k, v in state.items() if ".layer." in k and k.endswith("weight")
            and v.dim() == 2}


def test_kd_loss_formula():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    T = 2.0
    p_t = torch.softmax(t / T, -1)
    want = (p_t * (p_t.log() - torch.log_softmax(s / T, -1))).sum(-1).mean() * T**2
    assert torch.allclose(kd_loss(s, t, T), want, atol=1e-6)
    assert kd_loss(t, t, T).abs() < 1e-6
    task = torch.tensor(0.7)
    mixed = distill_loss(task, s, t, 0.25, T)
    assert torch.allclose(mixed, 0.25 * want + 0.75 * task, atol=1e-6)
    assert torch.allclose(kd_loss(s[:, :1], t[:, :1], T), ((s[:, :1] - t[:, :1]) ** 2).mean())


@pytest.mark.parametrize("method, mask", [("obert", "unstructured"), ("magnitude", "block4")])
def test_gradual_run_holds_masks_and_hits_target(tmp_path, tiny_model_dir, glue_dir,
                                                 monkeypatch, method, mask):
    checks = []
    original = MaskedPruning.on_step_end

    def checked(self, args, state, control, model=None, optimizer=None, **kw):
        out = original(self, args, state, control, model=model, optimizer=optimizer, **kw)
        opt = getattr(optimizer, "optimizer", optimizer)
        for name, w in self.weights.items():
            pruned = ~self.masks.masks[name]
            assert (w[pruned] == 0).all(), f"{name} revived at step {state.global_step}"
            for v in opt.state.get(w, {}).values():
                if torch.is_tensor(v) and v.shape == w.shape:
                    assert (v[pruned] == 0).all(), "optimizer state of a pruned weight"
        checks.append((state.global_step, self.sparsity()))
        return out

    monkeypatch.setattr(MaskedPruning, "on_step_end", checked)
    out = tmp_path / "out"
    assert _prune(_recipe(tmp_path, method, mask), tiny_model_dir, glue_dir, out) == 0
    assert [c[0] for c in checks] == list(range(1, 25))  # 8 steps/epoch x 3 epochs
    sparsity = dict(checks)
    assert sparsity[7] == 0 and sparsity[8] == pytest.approx(0.5, abs=1e-3)
    assert sparsity[16] == pytest.approx(0.8, abs=1e-3) and sparsity[24] == sparsity[16]

    # the saved folder: exactly the target count of zeros, loadable without obert
    weights = _targets(load_file(out / "model.safetensors"))
    n = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    k = 4 if mask == "block4" else 1
    assert zeros == k * round(0.8 * n / k)
    if mask == "block4":
        for w in weights.values():
            groups = (w.reshape(-1, 4) == 0).sum(-1)
            assert ((groups == 0) | (groups == 4)).all()
    info = json.loads((out / "sparsity.json").read_text())
    assert info["method"] == f"gradual-{method}" and info["settings"]["total_steps"] == 24
    assert [h["step"] for h in info["pruning_steps"]] == [8, 12, 16]
    assert info["settings"]["recipe"]["pruning"]["mask"] == mask

    # metrics.jsonl: loss, LR (rewound at each pruning step) and sparsity; eval every 2 steps
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in recs if "learning_rate" in r}
    starts = [0, 8, 12, 16]
    for step, r in train.items():  # the LR logged at step s is the one step s used
        assert r["learning_rate"] == pytest.approx(lr_at(step - 1, starts, 24, 1e-3, 1e-4))
    assert train[10]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert len([r for r in recs if "eval_accuracy" in r]) == 12
    for png in ("sparsity_lr.png", "eval.png", "layer_sparsity.png"):
        assert (out / "plots" / png).stat().st_size > 1000
    assert not (tmp_path / "out.checkpoints").exists()


class _Killed(KeyboardInterrupt):
    pass


@pytest.mark.slow  # trains or starts processes: make test runs it, test-fast does not
def test_kill_and_resume_equals_unbroken(tmp_path, tiny_model_dir, glue_dir, monkeypatch):
    recipe = _recipe(tmp_path)
    whole = tmp_path / "whole"
    assert _prune(recipe, tiny_model_dir, glue_dir, whole) == 0

    original = MaskedPruning.on_save

    def kill_after_12(self, args, state, control, **kw):
        original(self, args, state, control, **kw)
        if state.global_step == 12:  # right after a pruning step and its checkpoint
            raise _Killed

    broken = tmp_path / "broken"
    monkeypatch.setattr(MaskedPruning, "on_save", kill_after_12)
    assert _prune(recipe, tiny_model_dir, glue_dir, broken) == 130
    assert not broken.exists() and (tmp_path / "broken.checkpoints" / "checkpoint-12").is_dir()
    monkeypatch.setattr(MaskedPruning, "on_save", original)
    work = tmp_path / "broken.checkpoints"
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-8"]
    # Damaged copies: truncated masks, a missing pruning history, an unfinished save (no
    # marker). Each must fall back to checkpoint-8 and still end as the unbroken run.
    damaged = {"truncated": MASKS_FILE, "no-history": STATE_FILE, "unfinished": COMPLETE_FILE}
    for name, victim in damaged.items():
        shutil.copytree(work, tmp_path / f"{name}.checkpoints")
        f = tmp_path / f"{name}.checkpoints" / "checkpoint-12" / victim
        if name == "truncated":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        else:
            f.unlink()
    assert _prune(recipe, tiny_model_dir, glue_dir, broken) == 2  # refuses to start over silently
    assert _prune(recipe, tiny_model_dir, glue_dir, broken, "--resume", "--seed", "7") == 2
    assert _prune(recipe, tiny_model_dir, glue_dir, broken, "--resume") == 0

    def curve(folder):
        recs = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], round(r.get("loss", r.get("eval_loss", 0)), 6), r["sparsity"])
                for r in recs if "loss" in r or "eval_loss" in r]

    def same_as_whole(out: Path, resumed_at: str) -> None:
        a, b = load_file(whole / "model.safetensors"), load_file(out / "model.safetensors")
        for name in _targets(a):
            assert torch.equal(a[name] == 0, b[name] == 0), f"masks differ in {name}"
        for name in a:
            assert torch.allclose(a[name], b[name], atol=1e-6), f"weights differ in {name}"
        ea = json.loads((whole / "eval_results.json").read_text())
        assert ea == json.loads((out / "eval_results.json").read_text())
        assert curve(whole) == curve(out)
        info = json.loads((out / "sparsity.json").read_text())
        assert info["train"]["resumed_from"].endswith(resumed_at)
        whole_info = json.loads((whole / "sparsity.json").read_text())
        assert info["train"]["train_loss"] == pytest.approx(whole_info["train"]["train_loss"])

    same_as_whole(broken, "checkpoint-12")
    for name in damaged:
        assert _prune(recipe, tiny_model_dir, glue_dir, tmp_path / name, "--resume") == 0, name
        same_as_whole(tmp_path / name, "checkpoint-8")


def test_a_failed_start_leaves_no_resume_loop(tmp_path, tiny_model_dir, glue_dir, capsys):
    # A checkpoints folder without a complete checkpoint (a run that died before its first
    # save) is cleared by the next plain run, with a line, instead of asking for --resume.
    recipe = _recipe(tmp_path)
    stale = tmp_path / "out.checkpoints"
    stale.mkdir()
    mark_output(stale, "prune")  # as the run that made it did
    (stale / "run.json").write_text("{}")
    capsys.readouterr()
    assert _prune(recipe, tiny_model_dir, glue_dir, tmp_path / "out") == 0
    assert "before its first complete checkpoint" in capsys.readouterr().err
    assert (tmp_path / "out" / "model.safetensors").is_file() and not stale.exists()


def test_prune_refusals(tmp_path, tiny_model_dir, minilm_path, glue_dir, capsys):
    recipe = _recipe(tmp_path)
    # MiniLM has no SST-2 head: pure KD needs a teacher
    rc = _prune(recipe, minilm_path, glue_dir, tmp_path / "o1", teacher=False)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--teacher" in err and err.count("\n") == 0
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o1.checkpoints").exists()
    rc = _prune(recipe, tiny_model_dir, glue_dir, tmp_path / "o2", "--resume")
    assert rc == 2 and "no complete checkpoint" in capsys.readouterr().err
