"""``obert prune``: gradual pruning (or dense distillation) by a recipe, in the HF Trainer.

``run_prune`` is its steps, each a function here (or in ``common``), sharing one ``PruneJob``
(the run's inputs, and what each step made):

1. ``check_inputs``, ``check_checkpoints`` and the train split: everything checkable before
   any model is loaded;
2. ``training_args``: the Trainer's arguments (under torchrun this starts the process group);
3. ``resume_point``: the complete checkpoints of an interrupted run, or a clean start;
4. ``load_models``: student, tokenizer, teacher (``teacher_choice``), targets under a MaskSet;
5. ``load_data``: the encoded train split and the dev split;
6. ``build_trainer``: callbacks, Trainer, and the plan from the Trainer's own data loader;
7. ``check_identity``: a resumed run must be the same run; ``pick_checkpoint``: the newest
   checkpoint that loads;
8. ``train``; 9. ``write_outputs``.

A file-system error (a full disk, ...) ends the run with one line; the checkpoints folder goes
with it unless it holds an earlier run's checkpoints that ``--resume`` continued from.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from obert.compression.plan import int8_linears, prepare_qat
from obert.compression.quant import SCHEME, convert_qat
from obert.data.source import DataArgs
from obert.data.tokenize import batches, collator, encode
from obert.errors import ObertError
from obert.fs import CannotWrite, writing
from obert.io import QUANT_FILE, check_output, mark_output, save_weight_scales
from obert.models import (
    HeadInfo,
    check_head,
    check_same_vocab,
    has_cuda,
    has_tokenizer,
    load_classifier,
    load_tokenizer,
)
from obert.pruning.config import StepConfig
from obert.pruning.distributed import TIMEOUT, Comm
from obert.pruning.masks import MaskSet
from obert.pruning.pruner import build_pruner
from obert.pruning.step import fisher_memory_check
from obert.sparsity import sparsity_report
from obert.training.evaluate import evaluate_mlm, evaluate_split
from obert.training.gradual import (
    DistillTrainer,
    MaskedPruning,
    MetricsLog,
    QuantizeFrom,
    complete_checkpoints,
    read_metrics,
)
from obert.training.recipe import Recipe
from obert.training.schedule import StepPlan
from obert.workflows.common import (
    check_inputs,
    input_paths,
    log,
    mask_origin,
    maybe_evaluate,
    write_output,
)
from obert.workflows.oneshot import target_masks


@dataclass
class PruneRunArgs:
    """How to run a recipe (what the recipe itself does not say)."""

    teacher: str | None = None
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False
    logging_steps: int | None = None  # default: about 8 per epoch
    save_steps: int | None = None  # default: about 2 per epoch
    eval_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    bf16: bool = False
    fp16: bool = False
    keep_checkpoints: bool = False
    recipe_file: str | None = None  # an input: the output never replaces it or its folder


@dataclass
class Models:
    tokenizer: object
    model: object
    teacher: object | None
    teacher_name: str | None
    masks: MaskSet
    start_sparsity: float  # the start model's zeros, kept as masks


@dataclass
class Splits:
    train: object
    dev: object | None  # encoded for classification, raw for QA (scored by ``eval_fn``)
    eval_fn: object | None


@dataclass
class PruneJob:
    """One ``obert prune`` run as its steps share it: the inputs, then what the steps made."""

    model_name: str
    data: DataArgs
    recipe: Recipe
    output: str
    run: PruneRunArgs
    work: Path  # the checkpoints, beside the output
    comm: Comm
    models: Models | None = None  # load_models
    splits: Splits | None = None  # load_data
    inputs: list = field(default_factory=list)  # paths the outputs never replace


@dataclass
class Training:
    """What ``build_trainer`` made, and (after ``train``) how the run went."""

    trainer: DistillTrainer
    masked: MaskedPruning
    metrics_log: MetricsLog
    plan: StepPlan
    resume_from: Path | None = None
    out: object = None  # the Trainer's TrainOutput
    wall: float = 0.0


def checkpoint_dir(output: str | Path) -> Path:
    """Where an unfinished ``obert prune`` keeps its checkpoints (beside the output)."""
    out = Path(output)
    return out.with_name(out.name + ".checkpoints")


def run_prune(model_name: str, data: DataArgs, recipe: Recipe, output: str,
              run: PruneRunArgs | None = None) -> dict:
    """Gradual pruning (or dense KD training) by ``recipe``; writes the model folder with
    metrics.jsonl and plots/. ``run.resume`` continues from the last checkpoint."""
    run = run or PruneRunArgs()
    inputs = input_paths(model_name, data, run.teacher, recipe.distillation.teacher,
                         run.recipe_file)
    # --resume writes the output it never got to: like --overwrite, only over obert's own
    check_inputs(model_name, data, recipe.max_seq_length, output, run.overwrite or run.resume,
                 inputs)
    work = checkpoint_dir(output)
    found = check_checkpoints(work, run, inputs)
    raw_train = data.load("train")  # bad data is refused before any model is loaded
    args = training_args(work, recipe, run, data.seed)
    comm = Comm.current() if args.world_size > 1 else Comm()
    job = PruneJob(model_name, data, recipe, output, run, work, comm, inputs=inputs)
    candidates = resume_point(job, found)
    try:
        job.models = load_models(job)
        job.splits = load_data(job, raw_train)
        training = build_trainer(job, args)
        with writing(work):
            check_identity(job, resuming=bool(candidates))
        training.resume_from = pick_checkpoint(candidates, training.masked)
        with writing(work):
            train(training)
        result = write_outputs(job, training) if comm.is_main else {}
    except CannotWrite:
        if comm.is_main and not candidates:  # this run's own; an earlier run's stay for --resume
            shutil.rmtree(work, ignore_errors=True)
        raise
    comm.finish()
    return result


def training_args(work: Path, recipe: Recipe, run: PruneRunArgs, seed: int):
    """TrainingArguments with the recipe's batch and optimizer; ``max_steps`` and the logging
    and saving intervals are set by ``build_trainer`` once the data loader's length is known."""
    from transformers import TrainingArguments

    args = TrainingArguments(
        output_dir=str(work),
        max_steps=1,
        learning_rate=recipe.lr.max,
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=run.eval_batch_size,
        gradient_accumulation_steps=run.gradient_accumulation_steps,
        weight_decay=recipe.weight_decay,
        seed=seed,
        data_seed=seed,
        logging_steps=1,
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=2,
        report_to=[],
        disable_tqdm=run.quiet,
        log_level="error" if run.quiet else "warning",
        use_cpu=not has_cuda(),
        bf16=run.bf16,
        fp16=run.fp16,
        ddp_timeout=int(TIMEOUT.total_seconds()),  # the Fisher's collectives use it too
    )
    _ = args.world_size  # sets up the device and, under torchrun, the process group
    return args


def check_checkpoints(work: Path, run: PruneRunArgs, inputs: list) -> list[Path]:
    """Before any work: the complete checkpoints of an interrupted run, newest first
    (``--resume``), or [] once sure that a fresh run may clear ``work``: a file or a link
    there, a folder obert did not write, one holding an input, or an interrupted run's
    checkpoints without --overwrite, are refused."""
    found = complete_checkpoints(work)
    if run.resume:
        if not found:
            raise ObertError(f"--resume: no complete checkpoint in {work} to resume from; run "
                             "without --resume to start over")
        return found
    if work.exists() or work.is_symlink():
        if found and not run.overwrite:
            raise ObertError(f"an interrupted run's checkpoints are in {work}: pass --resume "
                             "to continue it, or --overwrite to start over")
        check_output(work, True, inputs=inputs, flag="the checkpoints folder")
    return []


def resume_point(job: PruneJob, found: list[Path]) -> list[Path]:
    """``found`` (``check_checkpoints``) when resuming, else [] after clearing the way for a
    fresh run. A folder with no complete checkpoint (a run that failed before its first save)
    is cleared without asking, so no --resume loop can arise."""
    work, run, comm = job.work, job.run, job.comm
    if run.resume:
        return found
    if work.exists() and comm.is_main:
        had = complete_checkpoints(work)
        shutil.rmtree(work)
        if not had:
            log(f"removed {work}: an earlier run stopped before its first complete checkpoint")
    return []


def load_models(job: PruneJob) -> Models:
    """Student and teacher; the student's targets under a MaskSet (its zeros stay pruned); the
    Fisher's per-rank memory checked before any data is read."""
    model_name, data, recipe, run, comm = job.model_name, job.data, job.recipe, job.run, job.comm
    task, dcfg, pcfg = data.spec, recipe.distillation, recipe.pruning
    tokenizer = load_tokenizer(model_name)
    model, head = load_classifier(model_name, task, with_info=True)
    if task.is_mlm:  # training under a random MLM head would wreck the encoder
        check_head(model_name, head, task)
    if recipe.layers.keep is not None:  # the student only: KD comes from the full teacher
        from obert.compression.layers import drop_layers

        n = model.config.num_hidden_layers
        drop_layers(model, recipe.layers.keep, "recipe key layers.keep")
        log(f"kept layers {recipe.layers.keep} of {n}")
    if recipe.quantization is not None:
        int8_linears(model)  # QAT needs encoder Linears: refuse before any training
    # the student's targets first: a bad pattern is refused before a teacher loads or logs
    masks = target_masks(model, pcfg or StepConfig(), recipe.targets,
                         "use mask unstructured or exclude it in targets")
    teacher, teacher_name = None, None
    if dcfg.hardness > 0:
        teacher_name, why = teacher_choice(model_name, head, task, run, recipe)
        teacher, t_head = load_classifier(teacher_name, task, with_info=True)
        check_head(teacher_name, t_head, task, "teacher")
        if teacher_name != model_name:  # KD compares outputs token id by token id
            check_same_vocab(model_name, model, tokenizer, teacher_name, teacher,
                             load_tokenizer(teacher_name) if has_tokenizer(teacher_name) else None)
        if comm.is_main:
            log(f"teacher: {teacher_name} ({why})")
    if pcfg is not None:
        fisher_memory_check(build_pruner(pcfg, masks, comm), pcfg, log,
                            lambda path: f"recipe key pruning.{path} =")
    return Models(tokenizer, model, teacher, teacher_name, masks, masks.sparsity())


def teacher_choice(model_name: str, head: HeadInfo, task, run: PruneRunArgs,
                   recipe: Recipe) -> tuple[str, str]:
    """The KD teacher and why: --teacher, else the recipe's, else the start model when obert
    fine-tuned it on this task (its config says so and its head was in the checkpoint)."""
    if run.teacher:
        return run.teacher, "--teacher"
    if recipe.distillation.teacher:
        return recipe.distillation.teacher, "the recipe's distillation.teacher"
    if head.fine_tuned_on(task):
        return model_name, ("the start model, with its MLM head" if task.is_mlm else
                            f"the start model, fine-tuned on {task.name}")
    raise ObertError(
        f"the recipe distills (distillation.hardness {recipe.distillation.hardness:g}) but "
        f"{model_name} is not fine-tuned on {task.name} (no head trained for it, or its config "
        "does not say so): pass --teacher with a fine-tuned model, or set "
        "distillation.hardness: 0")


def load_data(job: PruneJob, raw_train) -> Splits:
    """The encoded train split, and the dev split as the task is scored during training."""
    data, recipe, run, tokenizer = job.data, job.recipe, job.run, job.models.tokenizer
    task = data.spec
    train = encode(raw_train, tokenizer, task, recipe.max_seq_length, data.doc_stride)
    try:
        dev_raw = data.load("dev")
    except ObertError as e:
        log(f"no evaluation during training: {e}")
        return Splits(train, None, None)
    if task.is_mlm:  # scored on fixed masks, over the masked positions, outside Trainer's loop
        dev = encode(dev_raw, tokenizer, task, recipe.max_seq_length)
        return Splits(train, dev, lambda m: evaluate_mlm(m, dev, tokenizer, run.eval_batch_size,
                                                         True))
    if not task.is_qa:
        return Splits(train, encode(dev_raw, tokenizer, task, recipe.max_seq_length), None)

    def eval_fn(m):  # QA is scored on whole questions after span search, outside Trainer's loop
        return evaluate_split(m, dev_raw, tokenizer, task, recipe.max_seq_length,
                              run.eval_batch_size, True, data.doc_stride)

    return Splits(train, dev_raw, eval_fn)


def build_trainer(job: PruneJob, args) -> Training:
    """The Trainer with its callbacks; the plan comes from its own training data loader, so
    world size, batching and gradient accumulation are counted as the Trainer counts them."""
    models, splits, data, recipe = job.models, job.splits, job.data, job.recipe
    run, comm = job.run, job.comm
    from transformers import IntervalStrategy, PrinterCallback

    from obert.data.metrics import compute_metrics

    task, pcfg, tokenizer = data.spec, recipe.pruning, models.tokenizer

    def grad_batches(step: int):
        return batches(splits.train, tokenizer, pcfg.fisher.grad_batch_size, data.seed + step,
                       task)

    masked = MaskedPruning(models.masks, pcfg, None, grad_batches, comm, run.quiet, log)
    metrics_log = MetricsLog(Path(args.output_dir) / "metrics.jsonl", masked.sparsity)
    args.eval_strategy = IntervalStrategy.STEPS if splits.dev is not None else IntervalStrategy.NO
    trainer = DistillTrainer(
        model=models.model, args=args, train_dataset=splits.train, eval_dataset=splits.dev,
        data_collator=collator(task, tokenizer), processing_class=tokenizer,
        compute_metrics=None if splits.eval_fn is not None else (
            lambda p: compute_metrics(task, p.predictions, p.label_ids)),
        eval_fn=splits.eval_fn,
        callbacks=[masked, metrics_log], teacher=models.teacher, distill=recipe.distillation,
    )
    if run.quiet:
        trainer.remove_callback(PrinterCallback)
    spe = trainer.steps_per_epoch()
    plan = recipe.plan(spe)
    masked.plan, trainer.lr_fn = plan, recipe.lr_fn(plan)
    if plan.qat_start is not None:
        trainer.add_callback(QuantizeFrom(plan.qat_start, log, comm.is_main))
    args.max_steps = plan.total_steps
    args.logging_steps = args.eval_steps = run.logging_steps or max(1, spe // 8)
    args.save_steps = run.save_steps or max(1, spe // 2)
    if (pcfg is not None or plan.qat_start is not None) and comm.is_main:
        log(f"{task.name}: {len(splits.train):,} training "
            f"{'windows' if task.is_qa else 'blocks' if task.is_mlm else 'rows'}, {spe} optimizer steps per epoch"
            f"{f' per rank ({comm.world} ranks)' if comm.world > 1 else ''}, "
            f"{plan.total_steps} in all"
            + ("; pruning at steps " + ", ".join(f"{s} ({v:.1%})" for s, v in
                                                 sorted(plan.prune_at.items()))
               if plan.prune_at else "")
            + (f"; INT8 QAT from step {plan.qat_start}" if plan.qat_start is not None else ""))
    return Training(trainer, masked, metrics_log, plan)


def pick_checkpoint(candidates: list[Path], masked: MaskedPruning) -> Path | None:
    """The newest candidate whose masks and history load (into ``masked``); broken ones are
    skipped with a line. None for a fresh run."""
    for folder in candidates:
        try:
            masked.load(folder)
        except ValueError as e:
            log(f"skipping {folder}: its pruning state does not load ({e})")
            continue
        log(f"resuming from {folder} (sparsity {masked.sparsity():.4f})")
        return folder
    if candidates:
        raise ObertError(f"--resume: none of the {len(candidates)} checkpoints in "
                         f"{candidates[0].parent} loads; rerun with --overwrite to start over")
    return None


# Settings that change how a run is carried out but not what it computes: left out of the
# identity, so a run can resume with, e.g., another Fisher memory budget.
RUN_ONLY = (("recipe", "pruning", "fisher", "max_memory_gb"),)
_ABSENT = object()  # a key the interrupted run did not record


def check_identity(job: PruneJob, resuming: bool) -> None:
    """Record the run's identity in ``run.json``; a resumed run must match it (the number of
    ranks included: it changes the batches and the Fisher's split; an identity recorded before
    ``world_size`` was, takes any)."""
    teacher = job.models.teacher_name if job.models is not None else None
    identity = _without_run_knobs({
        "recipe": job.recipe.to_dict(), "model": job.model_name, "teacher": teacher,
        "data": job.data.describe(),
        "gradient_accumulation_steps": job.run.gradient_accumulation_steps,
        "world_size": job.comm.world})
    work, comm = job.work, job.comm
    id_file = work / "run.json"
    if resuming and id_file.is_file():
        before = _without_run_knobs(json.loads(id_file.read_text()))
        before.setdefault("world_size", identity["world_size"])
        changed = _differences(before, identity)
        if changed:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            raise ObertError(f"--resume: this run differs from the interrupted one in "
                             f"{'; '.join(changed[:3])}{more} (see {id_file}): resume with the "
                             "same arguments, or use --overwrite")
    if comm.is_main:
        work.mkdir(parents=True, exist_ok=True)
        mark_output(work, "prune")  # a later --overwrite may clear it
        id_file.write_text(json.dumps(identity, indent=2) + "\n")


def _without_run_knobs(identity: dict) -> dict:
    """``identity`` as JSON would give it back, without the ``RUN_ONLY`` settings."""
    out = json.loads(json.dumps(identity))
    for *parents, key in RUN_ONLY:
        d = out
        for k in parents:
            d = d.get(k) if isinstance(d, dict) else None
        if isinstance(d, dict):
            d.pop(key, None)
    return out


def _differences(before: dict, now: dict, prefix: str = "") -> list[str]:
    """Each leaf of ``now`` whose value differs from ``before``'s, as "key old → new"."""
    out = []
    for k, v in now.items():
        old = before.get(k, _ABSENT)
        if isinstance(v, dict) and isinstance(old, dict):
            out += _differences(old, v, f"{prefix}{k}.")
        elif old != v:
            out.append(f"{prefix}{k} {_short(old)} → {_short(v)}")
    return out


def _short(value: object) -> str:
    if value is _ABSENT:
        return "(absent)"
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def train(training: Training) -> None:
    """Masks on, the step-0 pruning step if the plan has one, then the Trainer's loop (its
    output and wall time kept in ``training``)."""
    trainer, masked, metrics_log = training.trainer, training.masked, training.metrics_log
    plan, resume_from = training.plan, training.resume_from
    t0 = time.time()
    if resume_from is not None:  # masks and history were loaded by pick_checkpoint
        if masked.comm.is_main:
            metrics_log.truncate(int(resume_from.name.split("-")[-1]))
    elif masked.comm.is_main:
        metrics_log.path.write_text("")
    masked.masks.attach()
    try:
        if resume_from is None:
            masked.masks.apply()
            if masked.cfg is not None and 0 in plan.prune_at:
                masked.prune(0, trainer.model)
        training.out = trainer.train(
            resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        masked.masks.detach()
        training.wall = time.time() - t0


def mean_logged_loss(path: Path) -> float | None:
    """The mean of the logged training losses: the whole run's, resumed or not (the Trainer's
    own ``training_loss`` covers only the steps after a resume)."""
    losses = [r["loss"] for r in read_metrics(path) if "loss" in r]
    return sum(losses) / len(losses) if losses else None


def write_outputs(job: PruneJob, training: Training) -> dict:
    """The model folder (rank 0): weights, sparsity.json, eval_results.json, metrics, plots."""
    output, work, models, data = job.output, job.work, job.models, job.data
    recipe, run, comm, model_name = job.recipe, job.run, job.comm, job.model_name
    model, plan, masked = training.trainer.model, training.plan, training.masked
    metrics_log, out, wall = training.metrics_log, training.out, training.wall
    resume_from = training.resume_from
    from obert.training.plots import plot_run, schedule_curves

    task, pcfg, qcfg = data.spec, recipe.pruning, recipe.quantization
    if qcfg is not None:  # (a run resumed after its last step never re-entered QAT)
        prepare_qat(model)
    # with QAT this scores the fake-quantized model: what the INT8 kernels compute
    final = maybe_evaluate(model, models.tokenizer, data, recipe.max_seq_length, run.quiet)
    scales = convert_qat(model) if qcfg is not None else None
    modules = {n: model.get_submodule(n) for n in models.masks.weights}
    report = sparsity_report(modules)
    lr = recipe.lr_fn(plan)
    kind = "sparse-transfer" if models.start_sparsity > 0 else "dense"
    info = {**report, "method": f"gradual-{pcfg.method}" if pcfg else f"{kind}-distill",
            "settings": {"recipe": recipe.to_dict(), "teacher": models.teacher_name,
                         "steps_per_epoch": plan.steps_per_epoch,
                         "total_steps": plan.total_steps,
                         "prune_at": {str(k): v for k, v in sorted(plan.prune_at.items())},
                         "gradient_accumulation_steps": run.gradient_accumulation_steps,
                         "world_size": comm.world},
            "pruning_steps": masked.history,
            **({"quantization": {
                "scheme": SCHEME, "file": QUANT_FILE, "layers": sorted(scales),
                "qat_start_step": plan.qat_start, "epochs": qcfg.epochs,
                "weights": "fp32 values exactly s_w·W_q (the dequantized INT8 weights)",
                "evaluated": "INT8 fake quantization (the kernels' numbers)"}}
               if scales is not None else {}),
            **({"masks": mask_origin(model_name, models.start_sparsity)}
               if models.start_sparsity > 0 else {}),
            "train": {"train_loss": mean_logged_loss(metrics_log.path),
                      "steps": out.global_step, "wall_s": wall,
                      "resumed_from": str(resume_from) if resume_from else None}}

    def run_files(tmp: Path) -> None:
        shutil.copy(metrics_log.path, tmp / "metrics.jsonl")
        if scales is not None:
            save_weight_scales(tmp, scales)
        curves = schedule_curves(plan.total_steps, [lr(s) for s in range(plan.total_steps)],
                                 masked.history)
        plot_run(read_metrics(metrics_log.path), report, sorted(plan.prune_at),
                 task.main_metric, tmp / "plots", curves)

    write_output(output, True, model, models.tokenizer, model_name, data, info, final, run_files,
                 "prune", job.inputs)
    if not run.keep_checkpoints:
        shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {output}: sparsity {report['global_sparsity']:.4f}, {plan.total_steps} steps "
        f"in {wall:.0f}s")
    return {**final, "sparsity": report["global_sparsity"], "wall_s": wall}
