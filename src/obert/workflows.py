"""The jobs behind the CLI: fine-tune, one-shot prune, evaluate. Each reads its inputs, checks
them before any long work, and writes its output folder atomically."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets

from obert import __version__
from obert.data.glue import load_split, subsample
from obert.data.tasks import TaskSpec, get_task
from obert.data.tokenize import batches, encode
from obert.errors import ObertError
from obert.io import atomic_output, check_output, save_model, sparsity_report
from obert.models import load_classifier, load_tokenizer
from obert.pruning.oneshot import (
    OneShotConfig,
    check_group_shape,
    fisher_memory_check,
    oneshot_prune,
    prepare,
)
from obert.pruning.targets import find_targets
from obert.training.evaluate import evaluate_split
from obert.training.finetune import FinetuneConfig, finetune


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class DataArgs:
    """Where a task's data comes from: a local folder, explicit files, or the hub."""

    task: str
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    max_train_samples: int | None = None
    seed: int = 42
    doc_stride: int = 128  # QA: overlap of the windows over a long context
    split_articles: int | None = None  # QA: train on dev minus its last N articles, test on them

    @property
    def spec(self) -> TaskSpec:
        return get_task(self.task)

    def load(self, split: str) -> datasets.Dataset:
        if self.split_articles is not None:
            from obert.data.qa import split_articles

            if not self.spec.is_qa:
                raise ObertError("--split-articles is for --task squad only")
            if split not in ("train", "dev"):
                raise ObertError(f"with --split-articles the splits are train and dev, not {split}")
            whole = load_split(self.spec, "dev", self.data_dir, self.validation_file)
            ds = split_articles(whole, self.split_articles)[0 if split == "train" else 1]
        else:
            file = {"train": self.train_file, "dev": self.validation_file}.get(split)
            ds = load_split(self.spec, split, self.data_dir, file)
        if split == "train":
            ds = subsample(ds, self.max_train_samples, self.seed)
        return ds

    def describe(self) -> dict:
        out = {"task": self.spec.name, "data_dir": self.data_dir, "train_file": self.train_file,
               "validation_file": self.validation_file,
               "max_train_samples": self.max_train_samples, "seed": self.seed}
        if self.spec.is_qa:
            out["doc_stride"] = self.doc_stride
            out["split_articles"] = self.split_articles
            if self.split_articles is not None:
                out["split"] = (f"article split of the dev file: train = all but its last "
                                f"{self.split_articles} articles, dev = those {self.split_articles}")
        return out


def set_quiet(quiet: bool) -> None:
    if quiet:
        from transformers.utils import logging as hf_logging

        datasets.disable_progress_bars()
        hf_logging.disable_progress_bar()


def run_finetune(model_name: str, data: DataArgs, cfg: FinetuneConfig, output: str,
                 overwrite: bool = False, quiet: bool = False) -> dict:
    task = data.spec
    check_output(output, overwrite)
    train = data.load("train")
    tokenizer = load_tokenizer(model_name)
    model = load_classifier(model_name, task)
    log(f"fine-tuning {model_name} on {task.name}: {len(train):,} training rows")
    t0 = time.time()
    summary = finetune(model, tokenizer, encode(train, tokenizer, task, cfg.max_seq_length, data.doc_stride), cfg, quiet)
    summary["wall_s"] = time.time() - t0
    metrics = _maybe_evaluate(model, tokenizer, data, cfg.max_seq_length, quiet)
    info = {**sparsity_report(model, _targets_or_none(model)), "method": "dense-finetune",
            "settings": cfg.to_dict(), "train": summary}
    _write_output(output, overwrite, model, tokenizer, model_name, data, info, metrics)
    return metrics


def run_oneshot(model_name: str, data: DataArgs, cfg: OneShotConfig, output: str,
                max_seq_length: int = 128, do_eval: bool = False, overwrite: bool = False,
                quiet: bool = False) -> dict:
    task = data.spec
    cfg.validate()
    check_output(output, overwrite)
    tokenizer = load_tokenizer(model_name)
    model = load_classifier(model_name, task)
    prepared = prepare(model, cfg)
    fisher_memory_check(prepared[1], cfg, lambda _: None)  # refuse before loading any data
    loader = None
    if cfg.method == "obert":
        # Only m·batch·r rows are ever drawn: tokenize a random subset of that size.
        need = cfg.num_grads * cfg.grad_batch_size * cfg.recomputations
        train = subsample(data.load("train"), need, data.seed)
        train = encode(train, tokenizer, task, max_seq_length, data.doc_stride)
        loader = batches(train, tokenizer, cfg.grad_batch_size, data.seed)
    t0 = time.time()
    oneshot_prune(model, cfg, loader, quiet=quiet, log=log, prepared=prepared)
    wall = time.time() - t0
    metrics = _maybe_evaluate(model, tokenizer, data, max_seq_length, quiet) if do_eval else {}
    report = sparsity_report(model, prepared[0])
    log(f"global sparsity {report['global_sparsity']:.4f} over {report['num_weights']:,} weights "
        f"in {wall:.1f}s")
    info = {**report, "method": cfg.method,
            "settings": {**cfg.to_dict(), "max_seq_length": max_seq_length}, "wall_s": wall}
    _write_output(output, overwrite, model, tokenizer, model_name, data, info, metrics)
    return metrics


def _write_output(output: str, overwrite: bool, model, tokenizer, model_name: str,
                  data: DataArgs, info: dict, metrics: dict,
                  extra: Callable[[Path], None] | None = None) -> None:
    """The model folder with sparsity.json (provenance added) and eval_results.json, atomically;
    ``extra`` writes more files into the temporary folder before it is renamed."""
    info = {**info, "obert_version": __version__, "source_model": model_name,
            "data": data.describe()}
    with atomic_output(output, overwrite) as tmp:
        save_model(model, tokenizer, tmp, info)
        if metrics:
            (tmp / "eval_results.json").write_text(json.dumps(metrics, indent=2) + "\n")
        if extra is not None:
            extra(tmp)


def run_evaluate(model_name: str, data: DataArgs, split: str = "dev", max_seq_length: int = 128,
                 batch_size: int = 64, quiet: bool = False) -> dict:
    task = data.spec
    ds = data.load(split)
    if len(ds) and "label" in ds.column_names and ds[0]["label"] == -1:
        raise ObertError(f"the {split} split of {task.name} has no labels to score: use --split dev")
    tokenizer = load_tokenizer(model_name)
    model = load_classifier(model_name, task)
    metrics = evaluate_split(model, ds, tokenizer, task, max_seq_length, batch_size, quiet,
                             data.doc_stride)
    sp = Path(model_name) / "sparsity.json"
    sparsity = json.loads(sp.read_text())["global_sparsity"] if sp.is_file() else None
    return {"task": task.name, "split": split, **metrics, "sparsity": sparsity}


def _targets_or_none(model) -> dict:
    try:
        return find_targets(model)
    except ObertError:
        return {}


def _maybe_evaluate(model, tokenizer, data: DataArgs, max_seq_length: int, quiet: bool) -> dict:
    """Dev metrics when a dev split can be had; training outputs do not fail without one."""
    try:
        dev = data.load("dev")
    except ObertError as e:
        log(f"no evaluation: {e}")
        return {}
    task = data.spec
    metrics = evaluate_split(model, dev, tokenizer, task, max_seq_length, quiet=quiet,
                             doc_stride=data.doc_stride)
    log("dev " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in metrics.items()))
    return {"task": task.name, "split": "dev", **metrics}


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


def checkpoint_dir(output: str | Path) -> Path:
    """Where an unfinished ``obert prune`` keeps its checkpoints (beside the output)."""
    out = Path(output)
    return out.with_name(out.name + ".checkpoints")


def run_prune(model_name: str, data: DataArgs, recipe, output: str,
              run: PruneRunArgs | None = None) -> dict:
    """Gradual pruning (or dense KD training) by ``recipe``; writes the model folder with
    metrics.jsonl and plots/. ``run.resume`` continues from the last checkpoint."""
    import math
    import shutil

    from transformers import DataCollatorWithPadding, PrinterCallback, TrainingArguments

    from obert.data.metrics import compute_metrics
    from obert.training.gradual import (
        DistillTrainer,
        MaskedPruning,
        MetricsLog,
        latest_checkpoint,
        read_metrics,
    )
    from obert.training.plots import plot_run, schedule_curves
    from obert.training.schedule import lr_at, plan_steps

    run = run or PruneRunArgs()
    task = data.spec
    work = checkpoint_dir(output)
    resume_from = None
    if run.resume:
        resume_from = latest_checkpoint(work)
        if resume_from is None:
            raise ObertError(f"--resume: no checkpoint in {work} to resume from; run without --resume")
        check_output(output, True)
    else:
        check_output(output, run.overwrite)
        if work.exists():
            if not run.overwrite:
                raise ObertError(f"an interrupted run's checkpoints are in {work}: pass --resume "
                                 "to continue it, or --overwrite to start over")
            shutil.rmtree(work)
    pcfg = recipe.pruning
    dcfg = recipe.distillation

    tokenizer = load_tokenizer(model_name)
    model, finetuned = load_classifier(model_name, task, with_info=True)
    teacher_name = run.teacher or dcfg.teacher or (model_name if finetuned else None)
    if dcfg.hardness > 0 and teacher_name is None:
        raise ObertError(
            f"the recipe distills (distillation.hardness {dcfg.hardness:g}) but {model_name} is not "
            f"fine-tuned on {task.name}: pass --teacher with a fine-tuned model, or set "
            "distillation.hardness: 0")
    teacher = load_classifier(teacher_name, task) if dcfg.hardness > 0 else None
    targets = find_targets(model, recipe.targets.include, recipe.targets.exclude)
    if pcfg is not None:
        check_group_shape(targets, pcfg.k, "use mask unstructured or exclude it in targets")

    train = encode(data.load("train"), tokenizer, task, recipe.max_seq_length, data.doc_stride)
    try:
        dev_raw = data.load("dev")
        # QA is scored on whole questions after span search, outside Trainer's eval loop.
        dev = dev_raw if task.is_qa else encode(dev_raw, tokenizer, task, recipe.max_seq_length)
    except ObertError as e:
        log(f"no evaluation during training: {e}")
        dev = dev_raw = None
    eval_fn = None
    if dev is not None and task.is_qa:
        def eval_fn(m):
            return evaluate_split(m, dev_raw, tokenizer, task, recipe.max_seq_length,
                                  run.eval_batch_size, True, data.doc_stride)

    args_probe = TrainingArguments(output_dir=str(work), report_to=[], use_cpu=not _cuda())
    world = args_probe.world_size
    batches_per_epoch = math.ceil(math.ceil(len(train) / world) / recipe.batch_size)
    ga = run.gradient_accumulation_steps
    spe = max(1, batches_per_epoch // ga + int(batches_per_epoch % ga > 0))
    targets_sched = pcfg.targets() if pcfg is not None else []
    plan = plan_steps(spe, recipe.epochs, targets_sched, recipe.lr.schedule == "cyclic_linear")
    warmup = int(round(recipe.lr.warmup_epochs * spe))

    def lr_of(step: int) -> float:
        return lr_at(step, plan.cycle_starts, plan.total_steps, recipe.lr.max, recipe.lr.min,
                     warmup)

    logging_steps = run.logging_steps or max(1, spe // 8)
    save_steps = run.save_steps or max(1, spe // 2)
    if pcfg is not None:
        from obert.pruning.fisher import fisher_memory_bytes
        from obert.pruning.oneshot import human_bytes

        if pcfg.method == "obert":
            need = fisher_memory_bytes([m.weight.numel() for m in targets.values()],
                                       pcfg.fisher.block_size)
            log(f"Fisher inverse: {human_bytes(need)} at each pruning step "
                f"(B={pcfg.fisher.block_size}, {sum(m.weight.numel() for m in targets.values()):,} weights)")
        log(f"{task.name}: {len(train):,} training {'windows' if task.is_qa else 'rows'}, {spe} optimizer steps per epoch, "
            f"{plan.total_steps} in all; pruning at steps "
            + ", ".join(f"{s} ({v:.1%})" for s, v in sorted(plan.prune_at.items())))

    def grad_batches(step: int):
        return batches(train, tokenizer, pcfg.fisher.grad_batch_size, data.seed + step)

    masked = MaskedPruning(targets, pcfg, plan, grad_batches, run.quiet, log)
    work.mkdir(parents=True, exist_ok=True)
    # A resumed run must be the same run: same recipe, model, data and teacher.
    identity = {"recipe": recipe.to_dict(), "model": model_name, "teacher": teacher_name,
                "data": data.describe(), "gradient_accumulation_steps": ga}
    id_file = work / "run.json"
    if resume_from is not None and id_file.is_file():
        before = json.loads(id_file.read_text())
        changed = sorted(k for k in identity if before.get(k) != json.loads(json.dumps(identity[k])))
        if changed:
            raise ObertError(f"--resume: {', '.join(changed)} differ from the interrupted run's "
                             f"(see {id_file}); resume with the same arguments or use --overwrite")
    id_file.write_text(json.dumps(identity, indent=2) + "\n")
    metrics_log = MetricsLog(work / "metrics.jsonl", masked.sparsity)
    if resume_from is not None:
        masked.load(resume_from)
        metrics_log.truncate(int(resume_from.name.split("-")[-1]))
        log(f"resuming from {resume_from} (sparsity {masked.sparsity():.4f})")
    else:
        metrics_log.path.write_text("")

    args = TrainingArguments(
        output_dir=str(work),
        max_steps=plan.total_steps,
        learning_rate=recipe.lr.max,
        per_device_train_batch_size=recipe.batch_size,
        per_device_eval_batch_size=run.eval_batch_size,
        gradient_accumulation_steps=ga,
        weight_decay=recipe.weight_decay,
        seed=data.seed,
        data_seed=data.seed,
        logging_steps=logging_steps,
        eval_strategy="steps" if dev is not None else "no",
        eval_steps=logging_steps if dev is not None else None,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=2,
        report_to=[],
        disable_tqdm=run.quiet,
        log_level="error" if run.quiet else "warning",
        use_cpu=not _cuda(),
        bf16=run.bf16,
        fp16=run.fp16,
    )
    trainer = DistillTrainer(
        model=model, args=args, train_dataset=train, eval_dataset=dev,
        data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
        compute_metrics=None if task.is_qa else (
            lambda p: compute_metrics(task, p.predictions, p.label_ids)),
        eval_fn=eval_fn,
        callbacks=[masked, metrics_log], teacher=teacher, distill=dcfg, lr_fn=lr_of,
    )
    if run.quiet:
        trainer.remove_callback(PrinterCallback)
    masked.attach()
    t0 = time.time()
    try:
        if resume_from is None:
            masked.apply_masks()
            if pcfg is not None and 0 in plan.prune_at:
                masked.prune(0, model)
        out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    finally:
        masked.detach()
    wall = time.time() - t0
    model = trainer.model

    final = _maybe_evaluate(model, tokenizer, data, recipe.max_seq_length, run.quiet)
    report = sparsity_report(model, targets)
    records = read_metrics(metrics_log.path)
    info = {**report, "method": f"gradual-{pcfg.method}" if pcfg else "dense-distill",
            "settings": {"recipe": recipe.to_dict(), "teacher": teacher_name,
                         "steps_per_epoch": spe, "total_steps": plan.total_steps,
                         "prune_at": {str(k): v for k, v in sorted(plan.prune_at.items())},
                         "gradient_accumulation_steps": ga, "world_size": world},
            "pruning_steps": masked.history,
            "train": {"train_loss": out.training_loss, "steps": out.global_step, "wall_s": wall,
                      "resumed_from": str(resume_from) if resume_from else None}}

    def run_files(tmp: Path) -> None:
        shutil.copy(metrics_log.path, tmp / "metrics.jsonl")
        curves = schedule_curves(plan.total_steps, [lr_of(s) for s in range(plan.total_steps)],
                                 masked.history)
        plot_run(records, report, sorted(plan.prune_at), task.main_metric, tmp / "plots", curves)

    _write_output(output, True, model, tokenizer, model_name, data, info, final, run_files)
    if not run.keep_checkpoints:
        shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {output}: sparsity {report['global_sparsity']:.4f}, {plan.total_steps} steps "
        f"in {wall:.0f}s")
    return {**final, "sparsity": report["global_sparsity"], "wall_s": wall}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
