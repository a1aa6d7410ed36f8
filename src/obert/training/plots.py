"""PNG plots of a gradual-pruning run, from its metrics.jsonl and sparsity report."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_run(records: list[dict], report: dict, prune_steps: list[int], metric: str,
             folder: Path) -> list[Path]:
    """Write sparsity_lr.png, eval.png (when evaluated) and layer_sparsity.png into ``folder``."""
    plt = _plt()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    train = [r for r in records if "learning_rate" in r]
    if train:
        fig, ax = plt.subplots(figsize=(8, 4))
        steps = [r["step"] for r in train]
        ax.step(steps, [r["sparsity"] for r in train], where="post", color="C0")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("sparsity", color="C0")
        ax.set_ylim(0, 1)
        ax2 = ax.twinx()
        ax2.plot(steps, [r["learning_rate"] for r in train], color="C1")
        ax2.set_ylabel("learning rate", color="C1")
        for s in prune_steps:
            ax.axvline(s, color="grey", lw=0.5, ls=":")
        ax.set_title("sparsity and learning rate")
        written.append(_save(fig, folder / "sparsity_lr.png", plt))
    key = f"eval_{metric}"
    evals = [r for r in records if key in r]
    if evals:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot([r["step"] for r in evals], [r[key] for r in evals], marker="o", ms=3)
        for s in prune_steps:
            ax.axvline(s, color="grey", lw=0.5, ls=":")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"dev {metric}")
        ax.set_title(f"dev {metric} (dotted: pruning steps)")
        written.append(_save(fig, folder / "eval.png", plt))
    tensors = report.get("tensors", {})
    if tensors:
        names = list(tensors)
        fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names)), 4))
        ax.bar(range(len(names)), [tensors[n]["sparsity"] for n in names])
        ax.axhline(report["global_sparsity"], color="C3", lw=1, label="global")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([_short(n) for n in names], rotation=90, fontsize=6)
        ax.set_ylim(0, 1)
        ax.set_ylabel("sparsity")
        ax.legend()
        ax.set_title("per-layer sparsity")
        written.append(_save(fig, folder / "layer_sparsity.png", plt))
    return written


def _short(name: str) -> str:
    """``bert.encoder.layer.3.attention.self.query.weight`` -> ``3.attention.self.query``."""
    for marker in (".layer.", ".layers.", ".block.", ".blocks."):
        if marker in name:
            name = name.split(marker, 1)[1]
            break
    return name.removesuffix(".weight")


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
