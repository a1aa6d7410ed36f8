"""GLUE's official metrics: accuracy, F1 (positive class 1), Matthews correlation, Pearson and
Spearman correlation."""

from __future__ import annotations

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from obert.data.tasks import TaskSpec


def predictions(task: TaskSpec, logits: np.ndarray) -> np.ndarray:
    """Class ids for classification, the score itself for regression."""
    logits = np.asarray(logits)
    return logits.reshape(-1) if task.is_regression else logits.argmax(-1)


def compute_metrics(task: TaskSpec, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All of the task's metrics, from raw model outputs and gold labels."""
    preds = predictions(task, logits)
    labels = np.asarray(labels)
    out: dict[str, float] = {}
    for name in task.metrics:
        if name == "accuracy":
            out[name] = float((preds == labels).mean())
        elif name == "f1":
            out[name] = float(f1_score(labels, preds, pos_label=1, zero_division=0))
        elif name == "matthews_correlation":
            out[name] = float(matthews_corrcoef(labels, preds))
        elif name == "pearson":
            out[name] = float(pearsonr(preds, labels)[0])
        elif name == "spearmanr":
            out[name] = float(spearmanr(preds, labels)[0])
        else:  # pragma: no cover - guarded by the task registry
            raise KeyError(name)
    return out
