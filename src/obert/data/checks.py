"""Check a loaded split before any work: rows, labels in the task's range, SQuAD structure.

Every command loads data through ``DataArgs.load``, which calls ``check_split``: a file with a
header only, a label of 5 for a 2-class task, a missing label, or a non-number for STS-B ends
in one line that names the file, before any model is trained.
"""

from __future__ import annotations

import math

import datasets

from obert.data.tasks import TaskSpec
from obert.errors import ObertError


def check_split(ds: datasets.Dataset, task: TaskSpec, split: str, where: str) -> datasets.Dataset:
    """Refuse an empty split, and (except for ``test``) rows without a label in range."""
    if len(ds) == 0:
        raise ObertError(f"the {split} data of {task.name} ({where}) has no rows: check the file "
                         "(a header alone is no data) or --max-train-samples")
    if task.is_qa or split == "test":
        return ds
    labels = ds["label"]
    if task.is_regression:
        bad = [v for v in labels if not _finite_number(v) or v == -1]
        if bad:
            raise ObertError(f"{where}: {len(bad)} {split} row(s) of {task.name} have no numeric "
                             f"label (first: {bad[0]!r}); {task.name} needs a score per row")
        return ds
    if task.is_mc:  # each row's label was checked against its own choices when read
        missing = sum(v == -1 for v in labels)
        if missing:
            raise ObertError(f"{where}: {missing} {split} row(s) of {task.name} have no answer; "
                             f"every {split} row needs the index of its right choice")
        return ds
    allowed = range(task.num_labels)
    bad = [v for v in labels if not _integer(v) or int(v) not in allowed]
    if bad:
        missing = sum(v is None or v == -1 for v in bad)
        what = (f"{missing} row(s) without a label" if missing == len(bad) else
                f"label {bad[0]!r} (and {len(bad) - 1} more)" if len(bad) > 1 else
                f"label {bad[0]!r}")
        raise ObertError(f"{where}: {task.name} {split} data has {what}; labels must be "
                         f"{', '.join(map(str, allowed))}"
                         + (f" ({', '.join(task.label_names)})" if task.label_names else ""))
    return ds


def _integer(v) -> bool:
    if isinstance(v, bool) or v is None:
        return False
    if isinstance(v, int):
        return True
    return isinstance(v, float) and v.is_integer()


def _finite_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def require_dir(data_dir) -> None:
    """Refuse a --data-dir that is not an existing folder."""
    from pathlib import Path

    if not Path(data_dir).is_dir():
        raise ObertError(f"data folder {data_dir} does not exist: pass an existing --data-dir")
