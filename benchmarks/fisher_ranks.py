"""Benchmark: the sharded empirical Fisher inverse, 1 process × 2 threads vs 2 ranks × 1 thread.

Measures ``obert.pruning.pruner.OBSPruner`` building the block-diagonal empirical Fisher inverse
(B = 50, m = 1024 gradients, λ = 1e-7) for the six Linear weights of one BERT-base encoder
layer (query, key, value, attention output 768×768; intermediate 3072×768; output 768×3072;
d = 7,077,888), two ways on the same 2 cores:

  (a) one process, ``torch.set_num_threads(2)``, world size 1;
  (b) two ranks of one thread each (torchrun, gloo), each holding and inverting only its shard
      of the Fisher blocks; the gradients of a round are exchanged by all-to-all.

Rank r computes gradients i = r, r+R, … < m (gradient i: N(0, (1e-3)²) from a generator seeded
with seed·1,000,003 + i, so both configurations see the same m gradients); a rank with none
left in a round passes None. Per configuration: time feeding the gradients (``begin`` +
``add_grads``; gradient generation is timed on its own and excluded, and in (b) a barrier
after each generation keeps one rank's generation out of the other's all-to-all wait), time
inverting (``current_fisher_inv``; the slowest rank counts), peak RSS per rank (``ru_maxrss``,
each configuration in fresh processes), and the Fisher bytes predicted per rank
(``memory_bytes``). Agreement of (b) with (a): sampled Fisher-inverse blocks (max relative
error), the saliency scores of all groups, and the masks (and weights) after a 50% step.

    python benchmarks/fisher_ranks.py                      # full size, results in results/
    python benchmarks/fisher_ranks.py --quick --out /tmp/fr   # d/64, m = 64: a smoke test
    python benchmarks/fisher_ranks.py --report-only        # re-render the .md from the .json

The orchestrator (no ``--worker``) runs (a) then (b) as subprocesses; each rank writes a JSON
(and its sampled blocks, scores and masks) to a temporary folder the orchestrator reads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _bench import HERE, log, run_and_report, thread_env
from torch import Tensor

NAME = "fisher_ranks"
MB = 1e6
HIDDEN, QUICK_HIDDEN = 768, 96  # the quick run scales every dimension by 1/8, so d by 1/64
FULL_M, QUICK_M = 1024, 64
# (config key, ranks, threads per rank): the two ways to spend the 2 cores.
CONFIGS = [("a", 1, 2), ("b", 2, 1)]
SRC_FILES = ("pruner.py", "distributed.py", "fisher.py")


# ---------------------------------------------------------------------------------------------
# Shared pieces


def layer_shapes(hidden: int) -> dict[str, tuple[int, int]]:
    """The six Linear weights [out, in] of one BERT encoder layer of width ``hidden``."""
    h, f = hidden, 4 * hidden
    return {"query": (h, h), "key": (h, h), "value": (h, h), "attention_output": (h, h),
            "intermediate": (f, h), "output": (h, f)}


def make_weights(shapes: dict[str, tuple[int, int]], seed: int) -> dict[str, Tensor]:
    """N(0, 0.02²) weights from ``seed``, the same in every process."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=gen).mul_(0.02) for n, s in shapes.items()}


def make_grads(i: int, shapes: dict[str, tuple[int, int]], scale: float, seed: int,
               gen: torch.Generator) -> dict[str, Tensor]:
    """Gradient number ``i``: N(0, scale²) entries, one tensor per weight, from ``i`` alone."""
    gen.manual_seed(seed * 1_000_003 + i)
    return {n: torch.randn(s, generator=gen).mul_(scale) for n, s in shapes.items()}


def sample_blocks(nb: int, n: int, seed: int, t: int) -> Tensor:
    """``n`` sorted global block indices of tensor number ``t`` (with nb blocks), seeded."""
    gen = torch.Generator().manual_seed(seed * 7919 + t)
    return torch.randperm(nb, generator=gen)[: min(n, nb)].sort().values


def cpu_busy_jiffies() -> int:
    """Busy CPU time of the whole machine (all processes), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def src_sha() -> str:
    """sha256 of the measured modules, so that configurations run on different code show."""
    import obert.pruning.pruner

    root = Path(obert.pruning.pruner.__file__).parent
    h = hashlib.sha256()
    for f in SRC_FILES:
        h.update((root / f).read_bytes())
    return h.hexdigest()[:12]


def sha(t: Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Worker: one rank of one configuration, in a fresh process.


def worker(a: argparse.Namespace) -> None:
    from tqdm import tqdm

    from obert.pruning.distributed import init_from_env, weights_digest
    from obert.pruning.fisher import num_blocks
    from obert.pruning.masks import MaskSet
    from obert.pruning.pruner import OBSPruner

    comm = init_from_env(cuda=False)
    torch.set_num_threads(a.threads)
    rank, world = comm.rank, comm.world
    out, code = Path(a.worker_out), src_sha()

    def barrier() -> None:
        if world > 1:
            import torch.distributed as dist

            dist.barrier()

    def say(msg: str) -> None:
        log(f"[{world}×{a.threads}, rank {rank}] {msg}")

    shapes = layer_shapes(a.hidden)
    weights = make_weights(shapes, a.seed)
    pruner = OBSPruner(MaskSet(weights), a.block_size, a.damp, comm=comm)
    predicted = pruner.memory_bytes()
    gen = torch.Generator()
    make_grads(0, {"w": (8, 8)}, a.scale, a.seed, gen)  # warm the RNG up off the books
    rss_start, peak_start = current_rss(), peak_rss()
    say(f"shard of {pruner.shards.numel(rank):,} weights, predicted Fisher memory "
        f"{predicted / MB:,.0f} MB")

    # Feeding: begin() allocates the accumulators, then one add_grads per round.
    barrier()
    t0 = time.perf_counter()
    pruner.begin()
    begin_s = time.perf_counter() - t0
    gen_s = add_s = 0.0
    own = 0
    rounds = math.ceil(a.num_grads / world)
    bar = tqdm(range(rounds), desc=f"{world}×{a.threads} feed", file=sys.stderr, leave=False,
               disable=a.quiet or rank != 0, mininterval=1.0)
    for t in bar:
        i = t * world + rank
        t0 = time.perf_counter()
        grads = make_grads(i, shapes, a.scale, a.seed, gen) if i < a.num_grads else None
        gen_s += time.perf_counter() - t0
        barrier()  # the all-to-all below then waits for no other rank's generation
        t0 = time.perf_counter()
        pruner.add_grads(grads)
        add_s += time.perf_counter() - t0
        own += grads is not None
        del grads
    peak_feed = peak_rss()

    # Inversion: local to each rank; inv_wall_s lasts until the slowest rank is done.
    barrier()
    t0 = time.perf_counter()
    finv = pruner.current_fisher_inv()
    inv_s = time.perf_counter() - t0
    barrier()
    inv_wall_s = time.perf_counter() - t0
    peak_inv = peak_rss()
    failures = len(pruner.failures)
    say(f"fed {own} gradients in {begin_s + add_s:.2f} s (+ {gen_s:.2f} s generating them), "
        f"inverted in {inv_s:.2f} s, peak RSS {peak_inv / MB:,.0f} MB")

    # Sampled blocks of this rank's shard, by global block index.
    blocks: dict[str, dict[str, Tensor]] = {}
    for t, (n, w) in enumerate(weights.items()):
        idx = sample_blocks(num_blocks(w.numel(), a.block_size), a.samples, a.seed, t)
        first = pruner.shards.span(n, rank)[0] // a.block_size
        mine = idx[(idx >= first) & (idx < first + finv[n].shape[0])]
        blocks[n] = {"idx": mine, "blocks": finv[n][mine - first].clone()}
    torch.save(blocks, out / f"blocks_rank{rank}.pt")
    fisher_bytes = sum(x.numel() * x.element_size() for x in finv.values())
    del finv

    # Scores (gathered: whole on every rank), then one 50% step (collective).
    scores = torch.cat([s.reshape(-1) for s in pruner.scores().values()])
    pruner.step(0.5)
    masks = torch.cat([m.reshape(-1) for m in pruner.masks.masks.values()])
    if rank == 0:
        new_w = torch.cat([w.detach().reshape(-1) for w in weights.values()])
        torch.save({"scores": scores, "masks": masks, "weights": new_w}, out / "result.pt")
    res = {
        "rank": rank, "world": world, "threads": a.threads,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "src_sha": code,
        "shard_numel": pruner.shards.numel(rank),
        "grads_own": own, "rounds": rounds,
        "begin_s": begin_s, "add_grads_s": add_s, "feed_s": begin_s + add_s,
        "gen_s": gen_s, "inv_s": inv_s, "inv_wall_s": inv_wall_s,
        "predicted_fisher_bytes": predicted, "fisher_inv_bytes": fisher_bytes,
        "fisher_failures": failures,
        "rss_start_bytes": rss_start, "peak_rss_start_bytes": peak_start,
        "peak_rss_feed_bytes": peak_feed, "peak_rss_bytes": peak_inv,
        "peak_rss_end_bytes": peak_rss(),
        "scores_sha": sha(scores), "masks_checksum": pruner.masks.checksum(),
        "weights_digest": weights_digest(weights)[:16], "sparsity": pruner.sparsity(),
    }  # fmt: skip
    (out / f"rank{rank}.json").write_text(json.dumps(res, indent=2) + "\n")
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Orchestrator


def worker_argv(a: argparse.Namespace, out: Path, threads: int) -> list[str]:
    return [
        str(Path(__file__).resolve()), "--worker", "--worker-out", str(out),
        "--threads", str(threads), "--hidden", str(a.hidden), "--num-grads", str(a.num_grads),
        "--block-size", str(a.block_size), "--damp", repr(a.damp), "--scale", repr(a.scale),
        "--seed", str(a.seed), "--samples", str(a.samples), *(["--quiet"] if a.quiet else []),
    ]  # fmt: skip


def run_config(a: argparse.Namespace, key: str, world: int, threads: int,
               tmp: Path) -> tuple[dict[str, Any], dict[str, Tensor], dict]:
    """One configuration in fresh processes: its summary, rank 0's result.pt, all blocks."""
    out = tmp / key
    out.mkdir()
    cmd = [sys.executable]
    if world > 1:
        cmd += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    cmd += worker_argv(a, out, threads)
    log(f"config ({key}): {world} rank(s) × {threads} thread(s)")
    busy0, ch0 = cpu_busy_jiffies(), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=thread_env(threads))
    wall = time.perf_counter() - t0
    busy1, ch1 = cpu_busy_jiffies(), resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU the rest of the machine used meanwhile, in cores: > 0.5 means it was shared.
    mine = (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
    other = max(0.0, (busy1 - busy0) / os.sysconf("SC_CLK_TCK") - mine) / wall
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]
    blocks: dict[str, dict[int, Tensor]] = {}
    for r in range(world):
        for n, x in torch.load(out / f"blocks_rank{r}.pt").items():
            blocks.setdefault(n, {}).update(zip(x["idx"].tolist(), x["blocks"], strict=True))
    feed, inv = max(r["feed_s"] for r in ranks), max(r["inv_s"] for r in ranks)
    summary = {
        "key": key, "ranks": world, "threads": threads,
        "command": shlex.join(cmd),
        "feed_s": feed, "inv_s": inv, "total_s": feed + inv,
        "gen_s": max(r["gen_s"] for r in ranks),
        "per_grad_feed_s": feed / a.num_grads,
        "process_wall_s": wall, "other_cpu_cores": other,
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in ranks),
        "peak_rss_end_bytes": max(r["peak_rss_end_bytes"] for r in ranks),
        "predicted_fisher_bytes": max(r["predicted_fisher_bytes"] for r in ranks),
        "fisher_inv_bytes": max(r["fisher_inv_bytes"] for r in ranks),
        "fisher_failures": sum(r["fisher_failures"] for r in ranks),
        "ranks_agree": len({(r["scores_sha"], r["masks_checksum"], r["weights_digest"])
                            for r in ranks}) == 1,
        "per_rank": ranks,
    }  # fmt: skip
    log(f"config ({key}): feeding {feed:.2f} s, inverting {inv:.2f} s, peak RSS "
        f"{summary['peak_rss_bytes'] / MB:,.0f} MB per rank ({wall:.1f} s in all; other "
        f"processes used {other:.2f} cores meanwhile)")
    return summary, torch.load(out / "result.pt"), blocks


def max_rel(x: Tensor, ref: Tensor) -> float:
    """max|x − ref| / max|ref|, in float64."""
    x, ref = x.double(), ref.double()
    return ((x - ref).abs().max() / ref.abs().max()).item() if ref.numel() else 0.0


def agreement(ra: dict[str, Tensor], rb: dict[str, Tensor], ba: dict, bb: dict) -> dict:
    """(b) against (a): sampled blocks, scores, masks and weights after the step."""
    per_tensor, n_blocks, bitwise = {}, 0, True
    for n in ba:
        if sorted(ba[n]) != sorted(bb[n]):
            raise RuntimeError(f"{n}: the two configurations sampled different blocks")
        idx = sorted(ba[n])
        x = torch.stack([bb[n][i] for i in idx])
        ref = torch.stack([ba[n][i] for i in idx])
        per_tensor[n] = max_rel(x, ref)
        n_blocks += len(idx)
        bitwise &= torch.equal(x, ref)
    sa, sb = ra["scores"].double(), rb["scores"].double()
    finite = torch.isfinite(sa) & torch.isfinite(sb)
    return {
        "blocks_compared": n_blocks,
        "block_max_rel_err": max(per_tensor.values()),
        "block_max_rel_err_per_tensor": per_tensor,
        "blocks_bitwise_equal": bitwise,
        "scores_compared": int(finite.sum()),
        "scores_max_rel_diff": ((sa - sb).abs() / sa.abs())[finite].max().item(),
        "scores_max_diff_over_max": max_rel(sb[finite], sa[finite]),
        "scores_bitwise_equal": torch.equal(ra["scores"], rb["scores"]),
        "masks_identical": torch.equal(ra["masks"], rb["masks"]),
        "masks_differing": int((ra["masks"] != rb["masks"]).sum()),
        "weights_after_step_max_rel": max_rel(rb["weights"], ra["weights"]),
    }  # fmt: skip


def machine_info() -> dict[str, Any]:
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {"nproc": nproc, "mem_total_gib": mem_kb / 2**20, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_before": os.getloadavg()}


def projection(a: argparse.Namespace, configs: dict[str, dict]) -> dict[str, Any]:
    """The full-size run's time, scaled from this run: feeding and generation ∝ d·m, the
    inversion ∝ d (crude: a small run has relatively more per-call overhead)."""
    fd = sum(math.prod(s) for s in layer_shapes(HIDDEN).values())
    d = sum(math.prod(s) for s in layer_shapes(a.hidden).values())
    work = fd / d * FULL_M / a.num_grads
    out = {}
    for k, c in configs.items():
        feed, inv, gen = c["feed_s"] * work, c["inv_s"] * fd / d, c["gen_s"] * work
        out[k] = {"feed_s": feed, "inv_s": inv, "gen_s": gen, "total_s": feed + inv + gen}
    return {"d_ratio": fd / d, "m_ratio": FULL_M / a.num_grads, "configs": out,
            "all_s": sum(c["total_s"] for c in out.values())}


def run(a: argparse.Namespace) -> dict[str, Any]:
    t_start = time.perf_counter()
    shapes = layer_shapes(a.hidden)
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine_info(),
        "settings": {
            "quick": a.quick, "shapes": shapes,
            "d": sum(math.prod(s) for s in shapes.values()), "block_size": a.block_size,
            "num_grads": a.num_grads, "damp": a.damp, "grad_scale": a.scale, "weight_std": 0.02,
            "seed": a.seed, "samples_per_tensor": a.samples, "sparsity_step": 0.5,
        },
    }  # fmt: skip
    configs, results, blocks = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="fisher_ranks-") as tmp:
        for key, world, threads in CONFIGS:
            configs[key], results[key], blocks[key] = run_config(a, key, world, threads, Path(tmp))
    shas = {r["src_sha"] for c in configs.values() for r in c["per_rank"]}
    res["src_sha"] = sorted(shas)  # more than one: src changed between the configurations
    res["configs"] = configs
    res["agreement"] = agreement(results["a"], results["b"], blocks["a"], blocks["b"])
    if a.hidden != HIDDEN or a.num_grads != FULL_M:  # a scaled-down run
        res["projection_to_full"] = projection(a, configs)
    res["elapsed_s"] = time.perf_counter() - t_start
    ag = res["agreement"]
    log(f"agreement (b) vs (a): blocks max rel err {ag['block_max_rel_err']:.2e}, scores max "
        f"rel diff {ag['scores_max_rel_diff']:.2e}, masks identical: {ag['masks_identical']}")
    return res


def fmt_mb(b: float) -> str:
    return f"{b / MB:,.1f}" if b < 100 * MB else f"{b / MB:,.0f}"


def report(res: dict[str, Any], out: Path) -> None:
    s, mi, ag = res["settings"], res["machine"], res["agreement"]
    nb = sum(math.ceil(math.prod(x) / s["block_size"]) for x in s["shapes"].values())
    L = ["# Sharded empirical Fisher inverse: 1 process × 2 threads vs 2 ranks × 1 thread"
         + (" (quick)" if s["quick"] else ""), ""]
    L += [f"Generated {res['date']} ({res['elapsed_s'] / 60:.1f} min) by:", "",
          "```", res["command"], "```", ""]
    L += ["## Machine", "",
          f"- `nproc` = {mi['nproc']}, RAM {mi['mem_total_gib']:.1f} GiB, load average "
          f"{mi['loadavg_before'][0]:.2f} before the run",
          f"- torch {mi['torch']}, Python {mi['python']}, {mi['platform']}",
          f"- src measured (`{'`, `'.join(SRC_FILES)}` sha256): {', '.join(res['src_sha'])}"
          + (" — **src changed between the configurations**" if len(res["src_sha"]) > 1 else ""),
          ""]  # fmt: skip
    shapes = ", ".join(f"{n} {o}×{i}" for n, (o, i) in s["shapes"].items())
    L += ["## Setup", "",
          f"- `OBSPruner(MaskSet(weights), block_size={s['block_size']}, damp={s['damp']:g})` "
          f"over {shapes}: d = {s['d']:,} weights, {nb:,} Fisher blocks; m = {s['num_grads']} "
          f"gradients of N(0, {s['grad_scale']:g}²) entries (gradient i from a generator seeded "
          f"with seed·1,000,003 + i), weights N(0, {s['weight_std']:g}²), seed {s['seed']}.",
          "- Feeding = `begin()` + every `add_grads` (the all-to-all included); generating the "
          "gradients is timed apart and excluded (in (b) a barrier, also untimed, follows each "
          "generation). Inverting = `current_fisher_inv()`. Both are the slowest rank's. "
          "Peak RSS = `ru_maxrss` right after the inversion, max over ranks, each configuration "
          "in fresh processes (the absolute peak: interpreter, torch and the weights included).",
          "- OMP_NUM_THREADS = MKL_NUM_THREADS = threads per rank in each subprocess, and "
          "`torch.set_num_threads(threads)`.",
          ""]  # fmt: skip
    L += ["## Results", "",
          "| config | ranks × threads | feeding (s) | inverting (s) | total (s) | generating "
          "(s, excluded) | peak RSS per rank (MB) | predicted Fisher memory per rank (MB) | "
          "block max rel err vs (a) | saliency max rel diff vs (a) | masks after 50% = (a) | "
          "other processes' CPU (cores) |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]  # fmt: skip
    for k, c in res["configs"].items():
        if k == "a":
            agree = "reference | reference | reference"
        else:
            agree = (f"{ag['block_max_rel_err']:.2e} | {ag['scores_max_rel_diff']:.2e} | "
                     + ("identical" if ag["masks_identical"]
                        else f"**{ag['masks_differing']} differ**"))
        L.append(f"| ({k}) | {c['ranks']} × {c['threads']} | {c['feed_s']:.2f} | "
                 f"{c['inv_s']:.2f} | {c['total_s']:.2f} | {c['gen_s']:.2f} | "
                 f"{fmt_mb(c['peak_rss_bytes'])} | {fmt_mb(c['predicted_fisher_bytes'])} | "
                 f"{agree} | {c['other_cpu_cores']:.2f} |")
    shared = max(c["other_cpu_cores"] for c in res["configs"].values()) > 0.5
    L += ["", "Other processes' CPU: the rest of the machine's busy time while the configuration "
          "ran (`/proc/stat`), in cores of " + str(mi["nproc"]) + "; "
          + ("**the machine was shared, so the times are noisy**." if shared
             else "the machine was otherwise idle."), ""]  # fmt: skip
    a_, b_ = res["configs"]["a"], res["configs"]["b"]
    masks = ("identical" if ag["masks_identical"]
             else f"differ in {ag['masks_differing']} weights")
    L += ["## Agreement of (b) with (a)", "",
          f"- Fisher-inverse blocks: {ag['blocks_compared']} sampled (≤ "
          f"{s['samples_per_tensor']} per tensor, seeded, from whichever rank owns them): max "
          f"|B−A|/max|A| = {ag['block_max_rel_err']:.2e}"
          + (" (bitwise equal)." if ag["blocks_bitwise_equal"] else "."),
          f"- Saliency of all {ag['scores_compared']:,} groups: max |b−a|/|a| = "
          f"{ag['scores_max_rel_diff']:.2e}, max|b−a|/max|a| = "
          f"{ag['scores_max_diff_over_max']:.2e}"
          + (" (bitwise equal)." if ag["scores_bitwise_equal"] else "."),
          f"- After `step(0.5)`: masks {masks}; updated weights max rel "
          f"{ag['weights_after_step_max_rel']:.2e}.",
          f"- The ranks of (b) agree with each other on scores, masks and weights: "
          f"{b_['ranks_agree']}. Blocks that needed more damping: (a) "
          f"{a_['fisher_failures']}, (b) {b_['fisher_failures']}.",
          ""]  # fmt: skip
    L += ["## Per rank", "",
          "| config | rank | shard weights | gradients own | feeding (s) | inverting (s) | "
          "RSS at start (MB) | peak after feeding (MB) | peak after inverting (MB) | peak at "
          "end (MB) | predicted (MB) | F⁻¹ held (MB) |",
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for k, c in res["configs"].items():
        for r in c["per_rank"]:
            L.append(f"| ({k}) | {r['rank']} | {r['shard_numel']:,} | {r['grads_own']} | "
                     f"{r['feed_s']:.2f} | {r['inv_s']:.2f} | {fmt_mb(r['rss_start_bytes'])} | "
                     f"{fmt_mb(r['peak_rss_feed_bytes'])} | {fmt_mb(r['peak_rss_bytes'])} | "
                     f"{fmt_mb(r['peak_rss_end_bytes'])} | "
                     f"{fmt_mb(r['predicted_fisher_bytes'])} | {fmt_mb(r['fisher_inv_bytes'])} |")
    L += ["", "“Peak at end” includes the agreement checks (scores, step), not part of the "
          "measurement. Worker commands:", ""]  # fmt: skip
    L += [f"- ({k}): `OMP_NUM_THREADS={c['threads']} {c['command']}`"
          for k, c in res["configs"].items()]
    if "projection_to_full" in res:
        p = res["projection_to_full"]
        L += ["", "## Scaled to the full size (rough)", "",
              f"Feeding and generation × {p['d_ratio']:.0f} (d) × {p['m_ratio']:.0f} (m), "
              f"inversion × {p['d_ratio']:.0f}: "
              + "; ".join(f"({k}) ≈ {c['total_s']:.0f} s" for k, c in p["configs"].items())
              + f"; both ≈ {p['all_s'] / 60:.1f} min plus start-up and checks."]  # fmt: skip
    L.append("")
    (out / f"{NAME}.md").write_text("\n".join(L))


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"hidden {QUICK_HIDDEN} (d/64) and m = {QUICK_M}: a smoke test")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--report-only", action="store_true", help="re-render the .md only")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--hidden", type=int, default=None, help="layer width (default 768)")
    ap.add_argument("--num-grads", type=int, default=None, help=f"m (default {FULL_M})")
    ap.add_argument("--block-size", type=int, default=50)
    ap.add_argument("--damp", type=float, default=1e-7)
    ap.add_argument("--scale", type=float, default=1e-3, help="gradient entries' std")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=64, help="Fisher blocks compared per tensor")
    # Worker-only
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.hidden is None:
        a.hidden = QUICK_HIDDEN if a.quick else HIDDEN
    if a.num_grads is None:
        a.num_grads = QUICK_M if a.quick else FULL_M
    if a.worker:
        worker(a)
        return
    run_and_report(Path(a.out), NAME, None if a.report_only else lambda: run(a), report)


if __name__ == "__main__":
    main()
