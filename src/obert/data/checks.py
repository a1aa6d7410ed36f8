"""Check a loaded split as a whole before any work: it has rows. (What each row must hold is
``obert.data.schema``'s, checked as the rows are read.)"""

from __future__ import annotations

import datasets

from obert.data.tasks import TaskSpec
from obert.errors import ObertError


class NoData(ObertError):
    """No file holds the split where one was looked for (a missing dev split is no fault
    where a command only evaluates when it can)."""


def check_split(ds: datasets.Dataset, task: TaskSpec, split: str, where: str) -> datasets.Dataset:
    """Refuse an empty split (a header alone is no data)."""
    if len(ds) == 0:
        raise ObertError(f"the {split} data of {task.name} ({where}) has no rows: check the file "
                         "(a header alone is no data) or --max-train-samples")
    return ds


def require_dir(data_dir) -> None:
    """Refuse a --data-dir that is not an existing folder."""
    from pathlib import Path

    if not Path(data_dir).is_dir():
        raise ObertError(f"data folder {data_dir} does not exist: pass an existing --data-dir")
