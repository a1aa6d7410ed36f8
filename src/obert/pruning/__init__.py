"""Pruning: the math (``fisher``, ``obs``, ``select``), the masks (``masks``), the pruners
(``pruner``: oBERT and magnitude), one pruning step for any pruner (``step``), what to prune
(``targets``), the Fisher's gradients (``gradients``) and its shards over ranks
(``distributed``). ``config`` is the one schema of a step, read by the CLI and by recipes."""
