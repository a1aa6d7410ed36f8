"""The jobs behind the CLI: fine-tune, one-shot prune, evaluate. Each reads its inputs, checks
them before any long work, and writes its output folder atomically."""

from __future__ import annotations

import json
import sys
import time
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
from obert.pruning.oneshot import OneShotConfig, fisher_memory_check, oneshot_prune, prepare
from obert.pruning.targets import find_targets
from obert.training.evaluate import evaluate
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

    @property
    def spec(self) -> TaskSpec:
        return get_task(self.task)

    def load(self, split: str) -> datasets.Dataset:
        file = {"train": self.train_file, "dev": self.validation_file}.get(split)
        ds = load_split(self.spec, split, self.data_dir, file)
        if split == "train":
            ds = subsample(ds, self.max_train_samples, self.seed)
        return ds

    def describe(self) -> dict:
        return {"task": self.spec.name, "data_dir": self.data_dir, "train_file": self.train_file,
                "validation_file": self.validation_file,
                "max_train_samples": self.max_train_samples, "seed": self.seed}


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
    summary = finetune(model, tokenizer, encode(train, tokenizer, task, cfg.max_seq_length), cfg, quiet)
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
        train = encode(train, tokenizer, task, max_seq_length)
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
                  data: DataArgs, info: dict, metrics: dict) -> None:
    """The model folder with sparsity.json (provenance added) and eval_results.json, atomically."""
    info = {**info, "obert_version": __version__, "source_model": model_name,
            "data": data.describe()}
    with atomic_output(output, overwrite) as tmp:
        save_model(model, tokenizer, tmp, info)
        if metrics:
            (tmp / "eval_results.json").write_text(json.dumps(metrics, indent=2) + "\n")


def run_evaluate(model_name: str, data: DataArgs, split: str = "dev", max_seq_length: int = 128,
                 batch_size: int = 64, quiet: bool = False) -> dict:
    task = data.spec
    ds = data.load(split)
    if len(ds) and ds[0]["label"] == -1:
        raise ObertError(f"the {split} split of {task.name} has no labels to score: use --split dev")
    tokenizer = load_tokenizer(model_name)
    model = load_classifier(model_name, task)
    metrics = evaluate(model, encode(ds, tokenizer, task, max_seq_length), tokenizer, task,
                       batch_size, quiet)
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
    metrics = evaluate(model, encode(dev, tokenizer, task, max_seq_length), tokenizer, task,
                       quiet=quiet)
    log("dev " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in metrics.items()))
    return {"task": task.name, "split": "dev", **metrics}
