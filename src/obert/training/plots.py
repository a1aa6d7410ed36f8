"""PNG plots of a gradual-pruning run, from its metrics.jsonl and sparsity report."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def schedule_curves(total_steps: int, lr: list[float], history: list[dict]) -> dict:
    """Per-step LR and sparsity of a run: ``lr[s]`` is the LR of optimizer step s + 1, and
    ``history`` the pruning steps done ({"step", "sparsity"})."""
    sparsity, s, done = [], 0.0, {h["step"]: h["sparsity"] for h in history}
    for step in range(total_steps + 1):
        s = done.get(step, s)
        sparsity.append(s)
    return {"step": list(range(1, total_steps + 1)), "lr": lr[:total_steps],
            "sparsity": sparsity[1:]}


def plot_run(records: list[dict], report: dict, prune_steps: list[int], metric: str,
             folder: Path, curves: dict | None = None) -> list[Path]:
    """Write sparsity_lr.png, eval.png (when evaluated) and layer_sparsity.png into ``folder``.

    ``curves`` (from ``schedule_curves``) draws LR and sparsity at every optimizer step; the
    logged records (one every logging step) are drawn as points over them.
    """
    plt = _plt()
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    train = [r for r in records if "learning_rate" in r]
    if train or curves:
        fig, ax = plt.subplots(figsize=(8, 4))
        ax2 = ax.twinx()
        if curves:
            ax.step(curves["step"], curves["sparsity"], where="post", color="C0")
            ax2.plot(curves["step"], curves["lr"], color="C1", lw=1)
        if train:
            steps = [r["step"] for r in train]
            ax.plot(steps, [r["sparsity"] for r in train], "o", ms=3, color="C0")
            ax2.plot(steps, [r["learning_rate"] for r in train], "o", ms=3, color="C1")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("sparsity", color="C0")
        ax.set_ylim(0, 1)
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
