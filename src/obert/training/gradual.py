"""Gradual pruning inside Hugging Face Trainer: masks, pruning steps, KD, the LR cycles.

Three pieces, each small:

- ``MaskedPruning``, a TrainerCallback that owns the masks. It zeroes the gradients of pruned
  weights (a hook, so gradient clipping and DDP see the masked gradient), re-applies the masks
  after every optimizer step, fires the recipe's pruning steps at their optimizer steps, and
  clears the optimizer state of newly pruned weights so momentum cannot revive them. It saves
  the masks beside every Trainer checkpoint.
- ``DistillTrainer``, a Trainer whose loss is KD from a teacher and whose LR schedule is the
  recipe's (cyclic linear with a rewind at every pruning step).
- ``MetricsLog``, a callback writing ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback

from obert.pruning.gradients import collect_grads
from obert.pruning.pruner import OBSPruner, build_pruner, mask_sparsity, sparsity_schedule
from obert.training.distill import distill_loss
from obert.training.recipe import DistillConfig, PruningConfig
from obert.training.schedule import StepPlan

MASKS_FILE = "obert_masks.safetensors"
STATE_FILE = "obert_pruning.json"


class MaskedPruning(TrainerCallback):
    """Masks as data for a training run, and the pruning steps of a ``StepPlan``.

    ``grad_batches(step)`` returns the gradient batches of the Fisher for the pruning step at
    optimizer step ``step`` (seeded by it, so a resumed run draws the same ones).
    """

    def __init__(
        self,
        targets: dict[str, nn.Linear],
        cfg: PruningConfig | None,
        plan: StepPlan,
        grad_batches: Callable[[int], Iterable[dict[str, Tensor]]] | None = None,
        quiet: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.weights = {n: m.weight for n, m in targets.items()}
        # Weights that are already exactly 0 (a sparse starting model) stay pruned.
        self.masks = {n: w.detach() != 0 for n, w in self.weights.items()}
        self.cfg, self.plan, self.grad_batches = cfg, plan, grad_batches
        self.quiet, self.log = quiet, log
        self.history: list[dict] = []  # one entry per pruning step done
        self._hooks: list = []

    # -- masks ---------------------------------------------------------------------------
    def attach(self) -> None:
        """Zero the gradient of pruned weights as it is computed. Call once the model sits on
        its training device (the Trainer moves it), so the masks can follow it there."""
        self.detach()
        self.masks = {n: m.to(self.weights[n].device) for n, m in self.masks.items()}
        for name, w in self.weights.items():
            self._hooks.append(w.register_hook(lambda g, n=name: g * self.masks[n]))

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @torch.no_grad()
    def apply_masks(self) -> None:
        for name, w in self.weights.items():
            w.mul_(self.masks[name])

    def sparsity(self) -> float:
        return mask_sparsity(self.masks)

    # -- pruning -------------------------------------------------------------------------
    def prune(self, step: int, model: nn.Module, optimizer=None) -> None:
        """Prune to the plan's sparsity for ``step`` (r sub-steps, a fresh Fisher for each)."""
        cfg, target = self.cfg, self.plan.prune_at[step]
        assert cfg is not None
        f = cfg.fisher
        pruner = build_pruner(
            cfg.method, {n: w.data for n, w in self.weights.items()}, masks=dict(self.masks),
            k=cfg.k, **({"block_size": f.block_size, "damp": f.damp} if cfg.method == "obert" else {}),
        )
        before = pruner.sparsity()
        for s in sparsity_schedule(before, target, cfg.recomputations):
            if isinstance(pruner, OBSPruner):
                assert self.grad_batches is not None
                pruner.begin()
                for grads in collect_grads(model, self.weights, self.grad_batches(step),
                                           f.num_grads, self.quiet):
                    pruner.add_grads(grads)
            pruner.step(s, cfg.scope)
        self.masks = {n: m.clone() for n, m in pruner.masks.items()}
        self._clear_optimizer_state(optimizer)
        self.apply_masks()
        self.history.append({"step": step, "target": target, "sparsity": self.sparsity()})
        self.log(f"pruning step at optimizer step {step}: sparsity {before:.4f} -> "
                 f"{self.sparsity():.4f} ({cfg.method})")

    @torch.no_grad()
    def _clear_optimizer_state(self, optimizer) -> None:
        """Adam's moments of a pruned weight would move it off 0: clear them."""
        if optimizer is None:
            return
        opt = getattr(optimizer, "optimizer", optimizer)
        for name, w in self.weights.items():
            for v in opt.state.get(w, {}).values():
                if isinstance(v, Tensor) and v.shape == w.shape:
                    v.mul_(self.masks[name])

    # -- Trainer events ------------------------------------------------------------------
    def on_optimizer_step(self, args, state, control, **kwargs):
        self.apply_masks()

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.cfg is not None and state.global_step in self.plan.prune_at:
            self.prune(state.global_step, model, optimizer)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        if not folder.is_dir():
            return
        save_file({n: m.contiguous() for n, m in self.masks.items()}, str(folder / MASKS_FILE))
        (folder / STATE_FILE).write_text(json.dumps({"history": self.history}, indent=2) + "\n")

    def load(self, folder: Path) -> None:
        masks = load_file(str(folder / MASKS_FILE))
        missing = set(self.masks) - set(masks)
        if missing:
            raise ValueError(f"checkpoint {folder} has no masks for {sorted(missing)[:3]}")
        device = next(iter(self.weights.values())).device
        self.masks = {n: masks[n].to(device) for n in self.masks}
        self.history = json.loads((folder / STATE_FILE).read_text())["history"]
        self.apply_masks()


class DistillTrainer(Trainer):
    """Trainer with KD from ``teacher`` (hardness/temperature from the recipe) and the
    recipe's LR schedule. Without a teacher the loss is the task loss."""

    def __init__(
        self, *args, teacher: nn.Module | None = None, distill: DistillConfig | None = None,
        lr_fn: Callable[[int], float] | None = None,
        eval_fn: Callable[[nn.Module], dict] | None = None, **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.eval_fn = eval_fn
        self.teacher, self.distill = teacher, distill or DistillConfig(hardness=0.0)
        self.lr_fn = lr_fn
        if teacher is not None:
            teacher.to(self.args.device).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        # Our loss is a batch mean: let Trainer scale it for gradient accumulation.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss
        h, T = self.distill.hardness, self.distill.temperature
        if self.teacher is not None and h > 0 and model.training:
            labels = ("labels", "start_positions", "end_positions")
            with torch.no_grad():
                t_out = self.teacher(**{k: v for k, v in inputs.items() if k not in labels})
            if hasattr(outputs, "start_logits"):  # QA: KD averaged over the start and end
                loss = 0.5 * (distill_loss(loss, outputs.start_logits, t_out.start_logits, h, T)
                              + distill_loss(loss, outputs.end_logits, t_out.end_logits, h, T))
            else:
                loss = distill_loss(loss, outputs.logits, t_out.logits, h, T)
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """With ``eval_fn`` (QA), score whole questions with it instead of Trainer's loop."""
        if self.eval_fn is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.eval_fn(self.model).items()}
        self.model.train()
        self.log(metrics)
        return metrics

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.lr_fn is not None:
            lr_fn, lr_max = self.lr_fn, self.args.learning_rate
            self.lr_scheduler = LambdaLR(optimizer or self.optimizer,
                                         lambda step: lr_fn(step) / lr_max)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)


class MetricsLog(TrainerCallback):
    """Append every Trainer log (loss, LR, eval metrics) with the sparsity to a JSONL file."""

    def __init__(self, path: Path, sparsity: Callable[[], float]) -> None:
        self.path, self.sparsity = Path(path), sparsity

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        rec = {"step": state.global_step, "epoch": state.epoch, **logs,
               "sparsity": self.sparsity()}
        with self.path.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")

    def truncate(self, step: int) -> None:
        """Drop records after ``step`` (logged after the checkpoint a run resumes from)."""
        if not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln)["step"] <= step]
        self.path.write_text("".join(ln + "\n" for ln in keep))


def read_metrics(path: str | os.PathLike) -> list[dict]:
    p = Path(path)
    return [json.loads(ln) for ln in p.read_text().splitlines() if ln.strip()] if p.exists() else []


def latest_checkpoint(folder: Path) -> Path | None:
    """The ``checkpoint-N`` with the largest N that holds our masks (a complete save)."""
    best = None
    for p in folder.glob("checkpoint-*") if folder.is_dir() else []:
        try:
            n = int(p.name.split("-")[-1])
        except ValueError:
            continue
        if (p / MASKS_FILE).is_file() and (best is None or n > best[0]):
            best = (n, p)
    return best[1] if best else None
