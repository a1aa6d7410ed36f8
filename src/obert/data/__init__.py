"""Data and tasks: GLUE specs, loading from the hub or local files, metrics."""

from obert.data.tasks import TASKS, TaskSpec, get_task

__all__ = ["TASKS", "TaskSpec", "get_task"]
