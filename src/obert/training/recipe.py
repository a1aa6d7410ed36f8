"""Recipes: the YAML schema of a gradual-pruning run, mirrored by dataclasses.

A recipe is checked when it is loaded: an unknown key, a wrong type or a value out of range is
one line that names the key. ``scaled_recipe`` writes a recipe for any target sparsity and
epoch budget by the rule in its docstring (docs/gradual.md, 'The scaling rule').
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from obert.errors import ObertError
from obert.pruning.config import MASK_GROUP, FisherConfig, StepConfig, TargetsConfig
from obert.sparsity import sparsity_problem
from obert.training.schedule import StepPlan, lr_at, plan_steps, sparsity_targets

__all__ = ["FisherConfig", "LayersConfig", "PruningConfig", "QuantizationConfig", "Recipe",
           "RecipeError", "TargetsConfig"]


class RecipeError(ObertError):
    pass


@dataclass
class LRConfig:
    """``linear``: max → min over the run. ``cyclic_linear``: the same, restarted (rewound to
    max) at every pruning step, each cycle decaying to min by the next step or the end."""

    schedule: str = "cyclic_linear"
    max: float = 8e-5
    min: float = 8e-6
    warmup_epochs: float = 0.0

    def check(self, key: str) -> None:
        _one_of(f"{key}.schedule", self.schedule, ("linear", "cyclic_linear"))
        _need(self.max > 0, f"{key}.max", f"= {self.max} must be positive")
        _need(0 <= self.min <= self.max, f"{key}.min", f"= {self.min} must be in [0, max]")
        _need(self.warmup_epochs >= 0, f"{key}.warmup_epochs", "must be ≥ 0")


@dataclass
class PruningConfig(StepConfig):
    """How each step prunes (``StepConfig``: method, mask, scope, recomputations, fisher), and
    when: steps at start_epoch, start_epoch + update_frequency, …, end_epoch. The first jumps to
    init_sparsity, later ones follow the interpolation to final_sparsity (reached exactly)."""

    init_sparsity: float = 0.7
    final_sparsity: float = 0.9
    start_epoch: float = 2.0
    end_epoch: float = 26.0
    update_frequency: float = 4.0
    interpolation: str = "cubic"

    def check(self, key: str) -> None:  # type: ignore[override]
        super().check(lambda path: f"recipe key {key}.{path} =", RecipeError)
        _one_of(f"{key}.interpolation", self.interpolation, ("cubic", "linear"))
        problem = sparsity_problem(self.final_sparsity)
        _need(problem is None, f"{key}.final_sparsity", f"= {problem}")
        _need(0 <= self.init_sparsity <= self.final_sparsity, f"{key}.init_sparsity",
              f"= {self.init_sparsity} must be in [0, final_sparsity]")
        _need(self.start_epoch >= 0, f"{key}.start_epoch", "must be ≥ 0")
        _need(self.end_epoch >= self.start_epoch, f"{key}.end_epoch",
              f"= {self.end_epoch} is before start_epoch {self.start_epoch}")
        _need(self.update_frequency > 0, f"{key}.update_frequency", "must be positive")

    def targets(self) -> list[tuple[float, float]]:
        """(epoch, sparsity) of each pruning step."""
        return sparsity_targets(self.start_epoch, self.end_epoch, self.update_frequency,
                                self.init_sparsity, self.final_sparsity, self.interpolation)


@dataclass
class DistillConfig:
    """loss = hardness·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − hardness)·task loss."""

    teacher: str | None = None
    hardness: float = 1.0
    temperature: float = 2.0

    def check(self, key: str) -> None:
        _need(0 <= self.hardness <= 1, f"{key}.hardness", f"= {self.hardness} is outside [0, 1]")
        _need(self.temperature > 0, f"{key}.temperature", "must be positive")


@dataclass
class LayersConfig:
    """Layer dropping before training: ``keep`` lists the start model's layers to keep (null:
    keep all). The student is then distilled from the full-depth teacher."""

    keep: list[int] | None = None

    def check(self) -> None:
        from obert.compression.layers import keep_problem

        problem = None if self.keep is None else keep_problem(self.keep)
        _need(problem is None, "layers.keep", problem or "")


@dataclass
class QuantLRConfig(LRConfig):
    """The QAT phase's LR: linear from max to min over its epochs (the paper's 2e-5 → 0)."""

    schedule: str = "linear"
    max: float = 2e-5
    min: float = 0.0

    def check(self, key: str) -> None:
        super().check(key)
        _one_of(f"{key}.schedule", self.schedule, ("linear",))


@dataclass
class QuantizationConfig:
    """INT8 quantization-aware training after the run's ``epochs``, masks fixed: the encoder's
    Linears compute what obert's INT8 kernels compute (``obert.compression.quant``), with
    straight-through gradients. ``quantization: {epochs: 1}`` is a whole section."""

    epochs: float = 2.0
    lr: QuantLRConfig = field(default_factory=QuantLRConfig)

    def check(self, key: str) -> None:
        _need(self.epochs > 0, f"{key}.epochs", f"= {self.epochs} must be positive")
        self.lr.check(f"{key}.lr")
        _need(self.lr.warmup_epochs <= self.epochs, f"{key}.lr.warmup_epochs",
              "is past quantization.epochs")


@dataclass
class Recipe:
    """A gradual-pruning run. ``pruning: null`` trains dense (with KD if a teacher is given);
    ``quantization`` adds INT8 QAT after ``epochs`` (``epochs: 0`` with ``pruning: null``:
    QAT alone, e.g. on an already pruned model)."""

    epochs: float = 30.0
    batch_size: int = 32
    max_seq_length: int = 128
    weight_decay: float = 0.0
    lr: LRConfig = field(default_factory=LRConfig)
    pruning: PruningConfig | None = field(default_factory=PruningConfig)
    distillation: DistillConfig = field(default_factory=DistillConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    layers: LayersConfig = field(default_factory=LayersConfig)
    quantization: QuantizationConfig | None = None

    def check(self) -> Recipe:
        if self.quantization is None or self.pruning is not None:
            _need(self.epochs > 0, "epochs", f"= {self.epochs} must be positive"
                  + ("" if self.pruning is not None else
                     " (0 only with a quantization section and pruning: null)"))
        _need(self.epochs >= 0, "epochs", f"= {self.epochs} must be ≥ 0")
        _need(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        _need(self.max_seq_length >= 8, "max_seq_length", "must be ≥ 8")
        _need(self.weight_decay >= 0, "weight_decay", "must be ≥ 0")
        self.lr.check("lr")
        _need(self.lr.warmup_epochs <= self.epochs, "lr.warmup_epochs", "is past epochs")
        if self.pruning is not None:
            self.pruning.check("pruning")
            _need(self.pruning.end_epoch <= self.epochs, "pruning.end_epoch",
                  f"= {self.pruning.end_epoch} is past epochs = {self.epochs}")
        self.distillation.check("distillation")
        self.targets.check(lambda path: f"recipe key targets.{path}:", RecipeError)
        self.layers.check()
        if self.quantization is not None:
            self.quantization.check("quantization")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def plan(self, steps_per_epoch: int) -> StepPlan:
        """This recipe in optimizer steps, given the Trainer's steps per epoch: the pruning
        (or dense) part, then the QAT part from ``plan.qat_start``."""
        targets = self.pruning.targets() if self.pruning is not None else []
        plan = plan_steps(steps_per_epoch, self.epochs, targets,
                          self.lr.schedule == "cyclic_linear")
        if self.quantization is None:
            return plan
        qat = max(1, int(math.ceil(self.quantization.epochs * steps_per_epoch - 1e-9)))
        return dataclasses.replace(plan, total_steps=plan.total_steps + qat,
                                   qat_start=plan.total_steps)

    def lr_fn(self, plan: StepPlan) -> Callable[[int], float]:
        """The learning rate of every optimizer step under ``plan`` (rewinds, warm-up; the QAT
        part decays linearly on its own)."""
        spe, end = plan.steps_per_epoch, plan.pretrain_steps
        warmup = int(round(self.lr.warmup_epochs * spe))
        q = self.quantization
        q_warmup = int(round(q.lr.warmup_epochs * spe)) if q else 0

        def lr(step: int) -> float:
            if step >= end and q is not None:
                return lr_at(step - end, [0], plan.total_steps - end, q.lr.max, q.lr.min,
                             q_warmup)
            return lr_at(step, plan.cycle_starts, end, self.lr.max, self.lr.min, warmup)

        return lr

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)


# --- loading and checking -------------------------------------------------------------------


def _need(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise RecipeError(f"recipe key {key} {msg}")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _need(value in allowed, key, f"= {value!r} is not one of {', '.join(allowed)}")


def _convert(value, tp, key: str):
    """``value`` as type ``tp`` (bool, int, float, str, list[str], a config class, X | None)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(value, args[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"recipe key {key} must be a mapping, not {type(value).__name__}")
        return _build(tp, value, key + ".")
    if origin is list:
        item = typing.get_args(tp)[0]
        ok = isinstance(value, list) and all(
            isinstance(v, item) and not isinstance(v, bool) for v in value)
        if not ok:
            kind = "integers" if item is int else "strings"
            raise RecipeError(f"recipe key {key} must be a list of {kind}")
        return list(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"recipe key {key} must be true or false, not {value!r}")
        return value
    if tp is float:
        # YAML 1.1 reads 8e-5 (no dot) as a string: accept any number-like value.
        if isinstance(value, bool):
            raise RecipeError(f"recipe key {key} must be a number, not {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise RecipeError(f"recipe key {key} must be a number, not {value!r}") from None
        if not math.isfinite(out):
            raise RecipeError(f"recipe key {key} must be finite, not {value!r}")
        return out
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"recipe key {key} must be an integer, not {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"recipe key {key} must be a string, not {value!r}")
        return value
    raise TypeError(tp)  # pragma: no cover - schema types are the ones above


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f": did you mean {prefix}{close[0]}?" if close else ""
            raise RecipeError(f"recipe key {prefix}{key} is unknown{hint} (known at this level: "
                              f"{', '.join(names)})")
    return cls(**{k: _convert(v, hints[k], prefix + k) for k, v in data.items()})


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the
    last). Keys brought in by a ``<<`` merge may still be overridden, as YAML intends."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
            if first is not None:
                where = f"on line {line}" if first == line else f"on lines {first} and {line}"
                raise _DuplicateKey(f"key {key!r} is given twice {where}: keep one")
            seen[key] = line
        return super().construct_mapping(node, deep)


def recipe_from_dict(data: dict) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError("a recipe must be a YAML mapping of keys (epochs, lr, pruning, ...)")
    return _build(Recipe, data).check()


def bundled_recipes() -> dict[str, Path]:
    """Name -> file of the recipes shipped with obert (``obert prune --recipe NAME``)."""
    folder = resources.files("obert") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A recipe from a YAML file, or a bundled recipe by name (e.g. ``obert-glue-90``)."""
    path = Path(name_or_path)
    if not path.is_file():
        bundled = bundled_recipes()
        if str(name_or_path) not in bundled:
            raise RecipeError(
                f"recipe {name_or_path} is neither a file nor a bundled recipe "
                f"({', '.join(sorted(bundled))})"
            )
        path = bundled[str(name_or_path)]
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except _DuplicateKey as e:
        raise RecipeError(f"recipe {path}: {e}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {path} is not a text file (not UTF-8): pass a YAML recipe") from None
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0]
        raise RecipeError(f"recipe {path} is not valid YAML: {first}") from None
    if data is None:  # empty or comments only: running the defaults would surprise
        raise RecipeError(f"recipe {path} is empty: write the keys of the run (see 'obert "
                          "recipe --target-sparsity 0.9 --epochs 30') or name a bundled recipe")
    return recipe_from_dict(data)


# --- the sparsity-scaled rule ---------------------------------------------------------------


# What a recipe's task family sets beside the schedule: batch, tokens per row, the Fisher's
# gradient batch, the KD temperature and the LR's max and min. Multiple choice follows
# 2312.13547's third guideline: pure KD at a higher temperature than the usual 1-2 (5.5, the
# oBERT paper's upstream and sparse-transfer value, PAPER.md §2); batch 16 as SMC-Bench trained
# (PAPER.md §6). mlm is the paper's upstream run (PAPER.md §2: 256 x 512, LR 5e-4 -> 5e-6, T 5.5).
FAMILIES = {
    "glue": {"batch_size": 32, "max_seq_length": 128, "grad_batch_size": 16, "temperature": 2.0,
             "lr": (8e-5, 8e-6)},
    "squad": {"batch_size": 16, "max_seq_length": 384, "grad_batch_size": 8, "temperature": 2.0,
              "lr": (8e-5, 8e-6)},
    "mc": {"batch_size": 16, "max_seq_length": 64, "grad_batch_size": 16, "temperature": 5.5,
           "lr": (8e-5, 8e-6)},
    "mlm": {"batch_size": 256, "max_seq_length": 512, "grad_batch_size": 16, "temperature": 5.5,
            "lr": (5e-4, 5e-6)},
}


def task_family(task: str) -> str:
    """The recipe family of a task name (or a family name itself): glue, squad, mc or mlm."""
    if task in FAMILIES:
        return task
    from obert.data.tasks import get_task

    spec = get_task(task)
    return "mlm" if spec.is_mlm else "squad" if spec.is_qa else "mc" if spec.is_mc else "glue"


def scaled_recipe(
    target: float, epochs: float, method: str = "obert", mask: str = "unstructured",
    first_step: float = 0.7, family: str = "glue",
) -> Recipe:
    """A recipe for ``target`` sparsity in ``epochs`` epochs, scaled with the target.

    The rule (2312.13547's guideline 2, made concrete; the paper gives no formula):

    - warm-up: dense fine-tuning for epochs/15 (the paper's 2 of 30);
    - first step: s₀ = min(first_step, target), the large one-shot jump;
    - h = log₂((1 − s₀)/(1 − target)), the halvings of density still to go after it;
    - steps: n = 1 + ⌈ln((1 − s₀)/(1 − target)) / ln 1.25⌉, so the later steps keep on
      average at least 80% of the remaining weights each (80% → 3, 90% → 6, 97% → 12);
    - recovery after the last step: epochs·min(0.4, 0.1 + 0.1·h);
    - steps evenly spaced from the warm-up to the recovery, cubic, one LR cycle per step
      (rewound to the family's max, decayed to its min); a single step (target ≤ s₀) comes right
      before the recovery.

    Steps, recovery and LR cycles all grow with the target; the last step is exactly target.
    ``family`` (``FAMILIES``) sets the batch, the tokens per row, the Fisher's gradient batch,
    the KD temperature (pure KD, hardness 1) and the LR. Embeddings and head stay dense.
    ``obert.training.recipe_table`` adds the other schedules, layer dropping and QAT.
    """
    if not 0 < target < 1:
        raise RecipeError(f"--target-sparsity {target} is outside (0, 1): use e.g. 0.9")
    if not epochs > 0:
        raise RecipeError(f"--epochs {epochs} must be positive")
    _one_of("pruning.method", method, ("obert", "magnitude"))
    _one_of("pruning.mask", mask, tuple(MASK_GROUP))
    s0 = min(first_step, target)
    ratio = (1 - s0) / (1 - target)
    h = math.log2(ratio)
    n = 1 + math.ceil(math.log(ratio) / math.log(1.25) - 1e-9)
    warmup = epochs / 15
    recovery = epochs * min(0.4, 0.1 + 0.1 * h)
    end = epochs - recovery
    # One step (target ≤ s₀) sits at the start of the recovery: dense until then.
    start = warmup if n > 1 else end
    freq = (end - start) / (n - 1) if n > 1 else 1.0
    _one_of("family", family, tuple(FAMILIES))
    fam = FAMILIES[family]
    # B: the paper's for the mask (50, or 32 for block4)
    fisher = FisherConfig(grad_batch_size=fam["grad_batch_size"])
    return Recipe(
        epochs=epochs,
        batch_size=fam["batch_size"],
        max_seq_length=fam["max_seq_length"],
        distillation=DistillConfig(hardness=1.0, temperature=fam["temperature"]),
        lr=LRConfig("cyclic_linear", *fam["lr"]),
        pruning=PruningConfig(
            method=method, init_sparsity=s0, final_sparsity=target, start_epoch=_r(start),
            end_epoch=_r(end), update_frequency=_r(freq), mask=mask, fisher=fisher,
        ),
    ).check()


def _r(x: float) -> float:
    return round(x, 6)
