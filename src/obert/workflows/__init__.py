"""The jobs behind the CLI, one module each: fine-tune/evaluate (``common``), ``oneshot`` and
``prune``."""

from obert.workflows.common import (
    DataArgs,
    log,
    maybe_evaluate,
    run_evaluate,
    run_finetune,
    set_quiet,
    write_output,
)
from obert.workflows.oneshot import run_oneshot
from obert.workflows.prune import PruneRunArgs, checkpoint_dir, run_prune

__all__ = ["DataArgs", "PruneRunArgs", "checkpoint_dir", "log", "maybe_evaluate", "run_evaluate",
           "run_finetune", "run_oneshot", "run_prune", "set_quiet", "write_output"]
