"""Gradual pruning inside Hugging Face Trainer: masks, pruning steps, KD, the LR cycles.

Three pieces, each small:

- ``MaskedPruning``, a TrainerCallback over a ``MaskSet`` (which owns the masks and zeroes the
  gradients of pruned weights through a hook). It re-applies the masks after every optimizer
  step, fires the recipe's pruning steps (``pruning_step``) at their optimizer steps, and
  clears the optimizer state of newly pruned weights so momentum cannot revive them. It saves
  the masks beside every Trainer checkpoint.
- ``DistillTrainer``, a Trainer whose loss is KD from a teacher and whose LR schedule is the
  recipe's (cyclic linear with a rewind at every pruning step), followed by ``global_step``.
- ``QuantizeFrom``, a callback that turns the encoder's Linears into INT8 fake-quantized
  ones (QAT) from a given optimizer step on.
- ``MetricsLog``, a callback writing ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LRScheduler
from transformers import Trainer, TrainerCallback

from obert.compression.plan import int8_cost_note, prepare_qat
from obert.finite import check_loss
from obert.pruning.distributed import Comm
from obert.pruning.masks import MaskSet
from obert.pruning.step import pruning_step
from obert.training.distill import distill_loss, token_kd_loss
from obert.training.recipe import DistillConfig, PruningConfig
from obert.training.schedule import StepPlan

MASKS_FILE = "obert_masks.safetensors"
STATE_FILE = "obert_pruning.json"
COMPLETE_FILE = "obert_complete"  # written last: the checkpoint is whole


class HoldMasks(TrainerCallback):
    """Keep a ``MaskSet``'s pruned weights at exactly 0 through training: its gradient hook
    (``attach``) zeroes their gradients, and the masks are re-applied after every optimizer
    step (weight decay and Adam's update of a zero gradient could still move them)."""

    def __init__(self, masks: MaskSet) -> None:
        self.masks = masks

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.masks.apply()


class MaskedPruning(HoldMasks):
    """The pruning steps of a ``StepPlan`` inside a training run, on a ``MaskSet``.

    ``grad_batches(step)`` returns the gradient batches of the Fisher for the pruning step at
    optimizer step ``step`` (seeded by it, so a resumed run draws the same ones). The plan may
    be set after construction (it depends on the Trainer's data loader): ``self.plan``.
    """

    def __init__(
        self,
        masks: MaskSet,
        cfg: PruningConfig | None,
        plan: StepPlan | None = None,
        grad_batches: Callable[[int], Iterable[dict[str, Tensor]]] | None = None,
        comm: Comm | None = None,
        quiet: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        super().__init__(masks)
        self.cfg, self.plan, self.grad_batches = cfg, plan, grad_batches
        self.comm = comm or Comm()
        self.quiet, self.log = quiet, log
        self.history: list[dict] = []  # one entry per pruning step done

    @property
    def weights(self) -> dict[str, Tensor]:
        return self.masks.weights

    def sparsity(self) -> float:
        return self.masks.sparsity()

    def prune(self, step: int, model: nn.Module, optimizer=None) -> None:
        """Prune to the plan's sparsity for ``step`` (r sub-steps, a fresh Fisher for each)."""
        assert self.cfg is not None and self.plan is not None
        target = self.plan.prune_at[step]
        batches = self.grad_batches(step) if self.cfg.needs_grads and self.grad_batches else None
        out = pruning_step(model, self.masks, self.cfg, target, batches, self.comm,
                           self.log, self.quiet)
        self.masks.clear_optimizer_state(optimizer)
        self.history.append({"step": step, "target": target, "sparsity": out["sparsity"],
                             "fisher_failures": out["fisher_failures"]})
        if self.comm.is_main:
            self.log(f"pruning step at optimizer step {step}: sparsity {out['before']:.4f} -> "
                     f"{out['sparsity']:.4f} ({self.cfg.method})")

    # -- Trainer events ------------------------------------------------------------------
    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.cfg is not None and state.global_step in self.plan.prune_at:
            self.prune(state.global_step, model, optimizer)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    # -- checkpoints ---------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        """Masks and history beside the Trainer's files (all written before ``on_save``), then
        the marker that says the checkpoint is complete."""
        if not folder.is_dir():
            return
        self.masks.save(folder / MASKS_FILE)
        (folder / STATE_FILE).write_text(json.dumps({"history": self.history}, indent=2) + "\n")
        (folder / COMPLETE_FILE).write_text("")

    def load(self, folder: Path) -> None:
        """Masks and history of a checkpoint; ValueError if they are missing or broken."""
        try:
            history = json.loads((folder / STATE_FILE).read_text())["history"]
            self.masks.load(folder / MASKS_FILE)
        except Exception as e:  # OSError, JSON, safetensors' own error on a truncated file
            raise ValueError(f"{type(e).__name__}: {str(e).strip()[:120]}") from None
        self.history = history


class QuantizeFrom(TrainerCallback):
    """INT8 QAT from optimizer step ``start`` on: before that step (and after a resume past
    it) the encoder's Linears become ``FakeQuantLinear`` on the same parameters, so the
    optimizer state, the masks' hooks and DDP carry on unchanged. Masks stay held by
    ``HoldMasks``/``MaskedPruning``: a pruned weight quantizes to exactly 0."""

    def __init__(self, start: int, log: Callable[[str], None] = print, is_main: bool = True):
        self.start, self.log, self.is_main = start, log, is_main
        self.names: list[str] = []

    def enable(self, model: nn.Module) -> None:
        if self.names:
            return
        self.names = list(prepare_qat(model).linears)
        if self.is_main:
            self.log(f"INT8 quantization-aware training from optimizer step {self.start}: "
                     f"{len(self.names)} encoder Linears fake-quantized")
            note = int8_cost_note(model)
            if note:
                self.log(note)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step >= self.start:
            self.enable(model)


class PlanLR(LRScheduler):
    """The LR of optimizer step g is ``lr_fn(g)``, g read from the Trainer's ``global_step``.

    Not from the scheduler's own count: HF skips ``scheduler.step()`` when an fp16 step
    overflows, which would shift every later rewind off its pruning step. ``FollowPlan``
    re-reads it at the start of every optimizer step."""

    def __init__(self, optimizer, lr_fn: Callable[[int], float], step_fn: Callable[[], int]):
        self.lr_fn, self.step_fn = lr_fn, step_fn
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        lr = self.lr_fn(self.step_fn())
        return [lr for _ in self.optimizer.param_groups]

    def sync(self) -> None:
        """Set the LR of the step about to run (no scheduler step: nothing to count)."""
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:  # the functions are rebuilt by the run, not pickled
        return {k: v for k, v in self.__dict__.items()
                if k not in ("optimizer", "lr_fn", "step_fn")}


class FollowPlan(TrainerCallback):
    """Set the planned LR before each optimizer step (see ``PlanLR``). It reads the scheduler
    from the trainer: the callback kwargs carry the one that existed at construction (None)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        if isinstance(self.trainer.lr_scheduler, PlanLR):
            self.trainer.lr_scheduler.sync()


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
        self._last_eval: tuple | None = None  # (step, ...), metrics: see ``evaluate``
        self.teacher, self.distill = teacher, distill or DistillConfig(hardness=0.0)
        self.lr_fn = lr_fn
        self.add_callback(FollowPlan(self))  # a no-op unless lr_fn is set before train()
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
            elif outputs.logits.dim() == 3:  # token logits (MLM): the masked positions only
                loss = token_kd_loss(outputs.logits, t_out.logits, inputs["labels"], h, T, loss)
            else:
                loss = distill_loss(loss, outputs.logits, t_out.logits, h, T)
        if model.training:
            check_loss(loss, self.state.global_step + 1, self._diverged_fix())
        return (loss, outputs) if return_outputs else loss

    def _diverged_fix(self) -> str:
        """What a diverged run leaves and how to go on: its complete checkpoints are kept."""
        kept = complete_checkpoints(Path(self.args.output_dir))
        where = (f"the checkpoints in {self.args.output_dir} (the last, {kept[0].name}, from "
                 "before it) are kept" if kept else "no checkpoint was complete yet")
        return (f"nothing is written, {where}; lower the learning rate (the recipe's lr) or "
                "drop --fp16, and start over with --overwrite")

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """With ``eval_fn`` (QA, MLM), score with it instead of Trainer's loop. The Trainer asks
        twice at a step that ends an epoch (after the step and after the epoch): the second
        time gets the first answer, not a second pass over the dev set."""
        key = (self.state.global_step, eval_dataset is None, metric_key_prefix)
        if self._last_eval is not None and self._last_eval[0] == key:
            return self._last_eval[1]
        if self.eval_fn is None:
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        else:
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in self.eval_fn(self.model).items()}
            self.model.train()
            self.log(metrics)
        self._last_eval = (key, metrics)
        return metrics

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None and self.lr_fn is not None:
            self.lr_scheduler = PlanLR(optimizer or self.optimizer, self.lr_fn,
                                       lambda: self.state.global_step)
            self._created_lr_scheduler = True
        return super().create_scheduler(num_training_steps, optimizer)

    def steps_per_epoch(self) -> int:
        """Optimizer steps per epoch from this Trainer's own training data loader (sharded over
        the ranks, batched as it will train) and its gradient accumulation."""
        n = len(self.get_train_dataloader())
        ga = self.args.gradient_accumulation_steps
        return max(1, n // ga + int(n % ga > 0))


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


def complete_checkpoints(folder: Path) -> list[Path]:
    """The ``checkpoint-N`` folders whose save finished (marker present), newest first."""
    found = []
    for p in folder.glob("checkpoint-*") if folder.is_dir() else []:
        n = p.name.split("-")[-1]
        if n.isdigit() and (p / COMPLETE_FILE).is_file():
            found.append((int(n), p))
    return [p for _, p in sorted(found, reverse=True)]
