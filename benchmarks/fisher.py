"""Benchmark: building the block-diagonal empirical Fisher inverse for one BERT-base layer.

Compares ``obert.pruning.fisher.EmpiricalFisher`` (chunked Σ g gᵀ by batched matmul, then a
float64 Cholesky inverse per block) against the paper's reference method, m sequential rank-1
Woodbury updates from F₀⁻¹ = I/λ, written below in fp32 and batched over all blocks.

Each measurement runs in its own fresh subprocess (``--worker``), so that peak RSS is per method.
Gradients are random, regenerated deterministically from their index, never all held at once;
their generation time is excluded from both methods' timings and reported on its own.

    python benchmarks/fisher.py                # full size: d = 7,077,888, B = 50, m = 1024
    python benchmarks/fisher.py --quick --out /tmp/fisher-smoke
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
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
from torch import Tensor

import obert.pruning.fisher as fisher_module
from obert.pruning.fisher import EmpiricalFisher, fisher_memory_bytes, num_blocks, to_blocks

BERT_BASE_LAYER = 7_077_888  # one BERT-base encoder layer's prunable weights (PAPER.md)
MB = 1e6
# This benchmark compares at equal precision with the fp32 Woodbury reference: the float32
# accumulator. src now defaults to float64 (2x the memory; its cost is measured by
# benchmarks/fisher_ranks.py).
ACCUM_DTYPE = torch.float32
EQUAL_MEMORY_TOL = 0.10  # "equal memory": ours' peak RSS at most 10% above Woodbury's


# ---------------------------------------------------------------------------------------------
# Shared pieces


def make_grad(i: int, d: int, scale: float, seed: int, gen: torch.Generator) -> Tensor:
    """Gradient number ``i``: N(0, scale²) entries, the same for every method and process."""
    gen.manual_seed(seed * 1_000_003 + i)
    return torch.randn(d, generator=gen).mul_(scale)


def src_defaults() -> dict[str, int]:
    """The chunk sizes ``src`` uses when the caller passes none (they are being tuned there)."""
    chunk = inspect.signature(EmpiricalFisher).parameters["chunk"].default
    inv_chunk = inspect.signature(EmpiricalFisher.fisher_inv).parameters["inv_chunk"].default
    return {"chunk": chunk, "inv_chunk": inv_chunk}


def src_fingerprint() -> str:
    """sha256 of the measured module, so a run that straddles an edit of it is caught."""
    return hashlib.sha256(Path(fisher_module.__file__).read_bytes()).hexdigest()[:12]


def git_state() -> dict[str, str]:
    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], capture_output=True, text=True, cwd=Path(__file__).parent)
        return r.stdout.strip()

    dirty = git("status", "--porcelain", "--", "src/obert/pruning/fisher.py")
    return {"head": git("rev-parse", "--short", "HEAD"), "fisher_py": dirty or "clean"}


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def woodbury_init(nb: int, block_size: int, damp: float) -> Tensor:
    """F₀⁻¹ = I/λ for every block, [nb, B, B] fp32."""
    finv = torch.zeros(nb, block_size, block_size)
    finv.diagonal(dim1=1, dim2=2).fill_(1.0 / damp)
    return finv


def woodbury_update(finv: Tensor, gb: Tensor, m: int) -> None:
    """In place, for all blocks: F⁻¹ ← F⁻¹ − (F⁻¹g)(F⁻¹g)ᵀ / (m + gᵀF⁻¹g).  ``gb``: [nb, B].

    This is the rank-1 form of F = λI + (1/m)·Σ g gᵀ, one gradient per call, as in the paper's
    reference code. F⁻¹ stays exactly symmetric (each update is), so gᵀF⁻¹ = (F⁻¹g)ᵀ; the
    row-vector bmm [nb,1,B]@[nb,B,B] measured ~2-3x faster here than the column form.
    """
    gr = gb.unsqueeze(1)  # [nb, 1, B]
    u = torch.bmm(gr, finv)  # (F⁻¹g)ᵀ, [nb, 1, B]
    den = torch.bmm(u, gr.transpose(1, 2))  # gᵀF⁻¹g, [nb, 1, 1]
    u.div_(den.add_(m).sqrt_())  # fold 1/(m + gᵀF⁻¹g) into both factors of the outer product
    # Broadcast outer product subtracted in place: one read-write sweep of F⁻¹, no [nb,B,B] temp.
    finv.addcmul_(u.transpose(1, 2), u, value=-1.0)


def sample_blocks(nb: int, n: int, seed: int) -> Tensor:
    """``n`` block indices for the dense float64 check, always including the zero-padded last."""
    gen = torch.Generator().manual_seed(seed + 7)
    idx = torch.randperm(nb - 1, generator=gen)[: max(n - 1, 0)] if nb > 1 else torch.empty(0)
    return torch.cat([idx.long(), torch.tensor([nb - 1])]).unique()


def dense_inverse(gs: Tensor, damp: float) -> Tensor:
    """float64 (λI + GᵀG/m)⁻¹ for sampled blocks; ``gs``: [m, S, B] float64."""
    m, _, b = gs.shape
    f = torch.einsum("msi,msj->sij", gs, gs) / m
    f += damp * torch.eye(b, dtype=torch.float64)
    return torch.linalg.inv(f)


def rel_errors(a: Tensor, b: Tensor, step: int = 8192) -> dict[str, float]:
    """max|A−B|/max|B| and ‖A−B‖_F/‖B‖_F, in float64, a slice of blocks at a time."""
    max_diff = max_ref = sq_diff = sq_ref = 0.0
    for s in range(0, a.shape[0], step):
        x, y = a[s : s + step].double(), b[s : s + step].double()
        diff = x - y
        max_diff = max(max_diff, diff.abs().max().item())
        max_ref = max(max_ref, y.abs().max().item())
        sq_diff += diff.square().sum().item()
        sq_ref += y.square().sum().item()
    return {"max_rel": max_diff / max_ref, "fro_rel": math.sqrt(sq_diff / sq_ref)}


def progress(it: range, desc: str, quiet: bool) -> Any:
    from tqdm import tqdm

    return tqdm(it, desc=desc, disable=quiet, leave=False, file=sys.stderr, mininterval=1.0)


# ---------------------------------------------------------------------------------------------
# Workers: one method, one configuration, one fresh process.


def worker_time(args: argparse.Namespace) -> dict[str, Any]:
    """Time one method on ``--worker-m`` gradients and measure its peak RSS."""
    d, bsz, m, damp = args.d, args.block_size, args.worker_m, args.damp
    nb = num_blocks(d, bsz)
    ours = args.worker == "ours"
    gen = torch.Generator()
    make_grad(0, 1000, args.scale, args.seed, gen).sum()  # warm up allocator/RNG off the books
    rss_before, maxrss_before = current_rss(), peak_rss()

    t0 = time.perf_counter()
    if ours:
        fisher = EmpiricalFisher(d, bsz, damp, chunk=args.worker_chunk, dtype=ACCUM_DTYPE)
    else:
        finv = woodbury_init(nb, bsz, damp)
    setup_s = time.perf_counter() - t0

    loop_s = gen_s = 0.0
    desc = f"ours c={args.worker_chunk}" if ours else "woodbury"
    for i in progress(range(m), f"{desc} m={m}", args.quiet):
        t0 = time.perf_counter()
        g = make_grad(i, d, args.scale, args.seed, gen)
        t1 = time.perf_counter()
        if ours:
            fisher.add_grad(g)
        else:
            woodbury_update(finv, to_blocks(g, bsz), m)
        t2 = time.perf_counter()
        gen_s += t1 - t0
        loop_s += t2 - t1
        del g

    peak_loop = peak_rss()  # to tell the accumulation's peak from the inversion's
    inv_s = None
    if ours and not args.worker_no_inv:
        t0 = time.perf_counter()
        finv = fisher.fisher_inv(inv_chunk=args.worker_inv_chunk)
        inv_s = time.perf_counter() - t0
    peak = peak_rss()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out: dict[str, Any] = {
        "method": args.worker,
        "chunk": args.worker_chunk if ours else None,
        "inv_chunk": args.worker_inv_chunk if ours else None,
        "src_sha": src_fingerprint(),
        "m": m,
        "setup_s": setup_s,
        "loop_s": loop_s,
        "per_grad_s": loop_s / m,
        "inv_s": inv_s,
        "gen_per_grad_s": gen_s / m,
        "rss_before_bytes": rss_before,
        "maxrss_before_bytes": maxrss_before,
        "peak_rss_bytes": peak,
        "peak_delta_bytes": peak - rss_before,
        "peak_loop_delta_bytes": peak_loop - rss_before,
        "cpu_s": ru.ru_utime + ru.ru_stime,
    }
    if args.worker_verify and inv_s is not None:  # after the peak was read
        out["vs_dense64"] = verify_dense(finv, args, m, gen)
    return out


def verify_dense(finv: Tensor, args: argparse.Namespace, m: int, gen: torch.Generator) -> dict:
    """Compare sampled blocks of ``finv`` with a float64 dense inverse of the same blocks."""
    nb = finv.shape[0]
    idx = sample_blocks(nb, args.dense_blocks, args.seed)
    gs = torch.empty(m, idx.numel(), args.block_size, dtype=torch.float64)
    for i in progress(range(m), "regenerate for the float64 check", args.quiet):
        gs[i] = to_blocks(make_grad(i, args.d, args.scale, args.seed, gen), args.block_size)[idx]
    ref = dense_inverse(gs, args.damp)
    f = torch.einsum("msi,msj->sij", gs, gs) / m
    f += args.damp * torch.eye(args.block_size, dtype=torch.float64)
    return {
        "blocks": idx.numel(),
        **rel_errors(finv[idx], ref),
        "cond_median": torch.linalg.cond(f).median().item(),
        "cond_max": torch.linalg.cond(f).max().item(),
    }


def worker_check(args: argparse.Namespace) -> dict[str, Any]:
    """Both methods on the same ``--worker-m`` gradients, full d; compare, and vs float64."""
    d, bsz, m, damp = args.d, args.block_size, args.worker_m, args.damp
    nb = num_blocks(d, bsz)
    gen = torch.Generator()
    idx = sample_blocks(nb, args.dense_blocks, args.seed)
    fisher = EmpiricalFisher(d, bsz, damp, chunk=args.worker_chunk, dtype=ACCUM_DTYPE)
    wood = woodbury_init(nb, bsz, damp)
    gs = torch.empty(m, idx.numel(), bsz, dtype=torch.float64)
    for i in progress(range(m), f"check m={m}", args.quiet):
        g = make_grad(i, d, args.scale, args.seed, gen)
        gb = to_blocks(g, bsz)
        woodbury_update(wood, gb, m)
        fisher.add_grad(g)
        gs[i] = gb[idx]
    ours = fisher.fisher_inv(inv_chunk=args.worker_inv_chunk)
    ref = dense_inverse(gs, damp)
    f = torch.einsum("msi,msj->sij", gs, gs) / m + damp * torch.eye(bsz, dtype=torch.float64)
    cond = torch.linalg.cond(f)
    return {
        "m": m,
        "chunk": args.worker_chunk,
        "inv_chunk": args.worker_inv_chunk,
        "src_sha": src_fingerprint(),
        "ours_vs_woodbury": rel_errors(ours, wood),
        "dense_blocks": idx.numel(),
        "ours_vs_dense64": rel_errors(ours[idx], ref),
        "woodbury_vs_dense64": rel_errors(wood[idx], ref),
        "cond_median": cond.median().item(),
        "cond_max": cond.max().item(),
    }


# ---------------------------------------------------------------------------------------------
# Orchestration


def cpu_busy_jiffies() -> int:
    """Busy CPU time of the whole machine (all processes), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal


def config_key(cfg: dict[str, Any]) -> str:
    key = f"c{cfg['chunk']}"
    if cfg["tuned"]:
        key += f"_ic{cfg['inv_chunk']}"
    return key + (f"_mmap{cfg['mmap']}" if cfg["mmap"] else "")


def allocator(mmap: int) -> str:
    return f"`MALLOC_MMAP_THRESHOLD_={mmap}`" if mmap else "glibc default"


def run_worker(
    args: argparse.Namespace,
    kind: str,
    m: int,
    cfg: dict[str, Any] | None = None,
    verify: bool = False,
    no_inv: bool = False,
) -> dict[str, Any]:
    """Run one worker in a fresh interpreter; also measure how busy the rest of the machine was."""
    cfg = {**src_defaults(), "mmap": 0, **(cfg or {})}
    env = dict(os.environ)
    if cfg["mmap"]:
        # A fixed threshold stops glibc from raising it after big frees (its default), so
        # blocks above it are unmapped on free and RSS tracks live tensors, not heap holes.
        env["MALLOC_MMAP_THRESHOLD_"] = str(cfg["mmap"])
    with tempfile.TemporaryDirectory() as tmp:
        res = Path(tmp) / "result.json"
        cmd = [
            sys.executable, __file__, "--worker", kind, "--worker-m", str(m),
            "--worker-chunk", str(cfg["chunk"]), "--worker-inv-chunk", str(cfg["inv_chunk"]),
            "--worker-out", str(res),
            "--d", str(args.d), "--block-size", str(args.block_size), "--damp", repr(args.damp),
            "--scale", repr(args.scale), "--seed", str(args.seed),
            "--threads", str(args.threads), "--dense-blocks", str(args.dense_blocks),
        ]  # fmt: skip
        cmd += ["--quiet"] if args.quiet else []
        cmd += ["--worker-verify"] if verify else []
        cmd += ["--worker-no-inv"] if no_inv else []
        hz = os.sysconf("SC_CLK_TCK")
        busy0, ch0 = cpu_busy_jiffies(), resource.getrusage(resource.RUSAGE_CHILDREN)
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env)
        wall = time.perf_counter() - t0
        busy1, ch1 = cpu_busy_jiffies(), resource.getrusage(resource.RUSAGE_CHILDREN)
        out = json.loads(res.read_text())
    own = (ch1.ru_utime + ch1.ru_stime) - (ch0.ru_utime + ch0.ru_stime)
    out["wall_s"] = wall
    out["own_cpu_cores"] = own / wall
    # CPU the rest of the machine used meanwhile, in cores: >0.5 means it was shared.
    out["other_cpu_cores"] = max(0.0, (busy1 - busy0) / hz - own) / wall
    out["loadavg1_before"] = load0
    out["mmap"] = cfg["mmap"]
    return out


def log(args: argparse.Namespace, msg: str) -> None:
    if not args.quiet:
        print(msg, file=sys.stderr, flush=True)


def best(rs: list[dict[str, Any]]) -> dict[str, Any]:
    return min(rs, key=lambda r: r["per_grad_s"])  # the least-disturbed repeat on a shared box


def summarize(args: argparse.Namespace, res: dict[str, Any]) -> dict[str, Any]:
    """Totals for m = ``--num-grads``, peak memory against Woodbury's, and the speed ratios."""
    big_m, runs = args.num_grads, res["runs"]
    wood = {}
    for mm, rs in runs["woodbury"].items():
        w = best(rs)
        wood[mm] = {
            "mmap": int(mm),
            "per_grad_s": w["per_grad_s"],
            "setup_s": w["setup_s"],
            "total_projected_s": w["setup_s"] + w["per_grad_s"] * big_m,
            "peak_delta_bytes": w["peak_delta_bytes"],
        }
    # The fastest and the leanest Woodbury of any allocator setting: the strictest yardsticks.
    w_fast = min(w["total_projected_s"] for w in wood.values())
    w_lean = min(w["peak_delta_bytes"] for w in wood.values())
    rows = []
    for cfg in res["configs"]:
        key = config_key(cfg)
        # Compared with Woodbury under the same allocator setting, for memory and for time.
        w = wood[str(cfg["mmap"])]
        w_total, w_peak = w["total_projected_s"], w["peak_delta_bytes"]
        ref, full = best(runs["ours_ref"][key]), runs["ours_full"][key]
        # The inversion does not depend on m, so the m=ref projection reuses the full run's.
        proj = ref["setup_s"] + ref["per_grad_s"] * big_m + full["inv_s"]
        meas = full["setup_s"] + full["loop_s"] + full["inv_s"]
        peak = full["peak_delta_bytes"]
        rows.append({
            **cfg,
            "key": key,
            "per_grad_s_ref": ref["per_grad_s"],
            "per_grad_s_full": full["per_grad_s"],
            "setup_s": full["setup_s"],
            "inv_s": full["inv_s"],
            "total_measured_s": meas,
            "total_projected_s": proj,
            "peak_delta_bytes": peak,
            "peak_loop_delta_bytes": full["peak_loop_delta_bytes"],
            "peak_vs_woodbury": peak / w_peak,
            "equal_memory": peak <= (1 + EQUAL_MEMORY_TOL) * w_peak,
            "ratio_measured": w_total / meas,
            "ratio_projected": w_total / proj,
            "ratio_per_grad": w["per_grad_s"] / full["per_grad_s"],
            "ratio_vs_fastest_woodbury": w_fast / meas,
            "peak_vs_leanest_woodbury": peak / w_lean,
        })  # fmt: skip

    def choose(tuned: bool) -> dict[str, Any] | None:
        eq = [r for r in rows if r["equal_memory"] and (tuned or not r["tuned"])]
        return max(eq, key=lambda r: r["ratio_measured"]) if eq else None

    def met(r: dict[str, Any] | None) -> bool:
        keys = ("ratio_measured", "ratio_projected", "ratio_vs_fastest_woodbury")
        return bool(r and min(r[k] for k in keys) >= 3.0)

    fastest = max(rows, key=lambda r: r["ratio_measured"])
    return {
        "woodbury": wood,
        "rows": rows,
        "equal_memory_default": choose(False),
        "equal_memory_any": choose(True),
        "fastest": fastest,
        "goal_met_default": met(choose(False)),
        "goal_met_any": met(choose(True)),
    }


def machine_info() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "mem_total_gib": mem_kb / 2**20,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def fmt_mb(b: float) -> str:
    return f"{b / MB:,.0f}"


def goal_lines(
    title: str, ch: dict[str, Any] | None, s: dict[str, Any], met: bool, big_m: int
) -> list[str]:
    if ch is None:
        return [f"- {title}: no configuration kept the peak within {EQUAL_MEMORY_TOL:.0%} of "
                "Woodbury's, so **not met** at equal memory."]  # fmt: skip
    return [
        f"- {title}: **chunk = {ch['chunk']}, inv_chunk = {ch['inv_chunk']}, allocator "
        f"{allocator(ch['mmap'])}**; peak "
        f"{fmt_mb(ch['peak_delta_bytes'])} MB vs Woodbury "
        f"{fmt_mb(s['woodbury'][str(ch['mmap'])]['peak_delta_bytes'])} MB "
        f"({ch['peak_vs_woodbury']:.2f}×); "
        f"speed-up for m = {big_m}: **{ch['ratio_measured']:.1f}×** measured / "
        f"{ch['ratio_projected']:.1f}× extrapolated (per gradient {ch['ratio_per_grad']:.1f}×); "
        f"against the fastest Woodbury of any allocator setting {ch['ratio_vs_fastest_woodbury']:.1f}×, "
        f"and its peak is {ch['peak_vs_leanest_woodbury']:.2f}× the leanest Woodbury's "
        f"→ ≥ 3× goal **{'met' if met else 'not met'}** (all three ratios ≥ 3).",
    ]


def write_markdown(path: Path, res: dict[str, Any]) -> None:
    a, s, mi, chk = res["args"], res["summary"], res["machine"], res["check"]
    big_m, ref_m = a["num_grads"], a["ref_grads"]
    wruns = [r for rs in res["runs"]["woodbury"].values() for r in rs]
    all_runs = (
        wruns
        + [r for rs in res["runs"]["ours_ref"].values() for r in rs]
        + list(res["runs"]["ours_full"].values())
        + [chk]
    )
    others = [r["other_cpu_cores"] for r in all_runs]
    shared = max(others) > 0.5
    nb = num_blocks(a["d"], a["block_size"])
    acc_mb = fmt_mb(fisher_memory_bytes(a["d"], a["block_size"], itemsize=4))
    gen_ms = sum(r["gen_per_grad_s"] for r in wruns) / len(wruns) * 1e3
    L: list[str] = ["# Empirical Fisher inverse: chunked GᵀG + Cholesky vs. rank-1 Woodbury", ""]
    L += [f"Generated {res['date']} ({res['elapsed_min']:.1f} min) by:", ""]
    L += ["```", res["command"], "```", ""]
    if "rendered_by" in res:
        L += [f"(This page was re-rendered from `fisher.json`, numbers unchanged, by "
              f"`{res['rendered_by']}`.)", ""]  # fmt: skip
    src = res["src"]
    same = len(src["shas_measured"]) == 1 and src["git_start"] == src["git_end"]
    L += [
        f"Code measured: `src/obert/pruning/fisher.py` sha256 {', '.join(src['shas_measured'])} "
        f"(git HEAD {src['git_start']['head']} at the start, {src['git_end']['head']} at the "
        f"end; the file was {src['git_start']['fisher_py']} against HEAD). "
        + ("Every worker saw the same file." if same else "**The file changed during the run: "
           "rows may mix versions; rerun before relying on them.**"),
        "",
    ]  # fmt: skip
    if res.get("resumed", {}).get("steps_reused"):
        rs = res["resumed"]
        L += [f"Resumed run: {len(rs['steps_reused'])} measurement(s) were reused from an "
              f"interrupted run begun {rs['journal_started']} with the same settings and src: "
              f"{', '.join(rs['steps_reused'])}.", ""]  # fmt: skip
    L += ["## Machine", ""]
    L += [
        f"- {mi['nproc']} CPUs, {mi['cpu_model']} (`/proc/cpuinfo`); RAM {mi['mem_total_gib']:.1f} GiB",
        f"- torch {mi['torch']}, Python {mi['python']}; every worker calls "
        f"`torch.set_num_threads({a['threads']})`",
        f"- Other processes' CPU use while each worker ran: {min(others):.2f}–{max(others):.2f} "
        f"cores of {mi['nproc']} (from `/proc/stat`; per run in `fisher.json`). "
        + ("**The machine was shared**, so absolute times are noisy and slower than on an idle "
           "machine; both methods ran in the same session, the short runs interleaved."
           if shared else "The machine was otherwise idle."),
        "",
    ]  # fmt: skip
    L += ["## Setup", ""]
    L += [
        f"- d = {a['d']:,} weights, B = {a['block_size']}, {nb:,} blocks; one fp32 [nb, B, B] "
        f"tensor (`fisher_memory_bytes`) = {acc_mb} MB.",
        f"- λ = {a['damp']:g}; gradient entries N(0, {a['scale']:g}²), regenerated from their "
        "index by a seeded `torch.Generator`, one at a time (never all m held). Generation is "
        f"**excluded** from both methods' times (it took {gen_ms:.1f} ms/gradient on its own). "
        "Both methods' timed step includes `to_blocks` (flatten + pad).",
        "- Reference (`woodbury_update` in this file): fp32, batched over all blocks, one rank-1 "
        "update per gradient: `bmm` for gᵀF⁻¹ (the row form; F⁻¹ stays exactly symmetric), "
        "`bmm` for gᵀF⁻¹g, then one in-place broadcast `addcmul_` for the downdate.",
        "- Ours: `EmpiricalFisher(d, B, λ, chunk)`, `add_grad` per gradient, then "
        f"`fisher_inv()` (float64 Cholesky, in place). Untagged rows use `src` defaults except "
        f"for `chunk` (defaults here: chunk = {res['src']['defaults']['chunk']}, inv_chunk = "
        f"{res['src']['defaults']['inv_chunk']}). Rows marked *tuned* use settings a caller can "
        "choose today without touching `src/`: another `inv_chunk`, and/or the process started "
        "with a fixed glibc `MALLOC_MMAP_THRESHOLD_` (Woodbury is then measured under the same "
        "setting and each row is compared with the Woodbury run of its own allocator setting).",
        "- Each measurement is a fresh subprocess. Peak memory = `ru_maxrss` at the end minus "
        "the RSS just before the first allocation; it includes the few gradient-sized "
        f"({4 * a['d'] / MB:.0f} MB) temporaries both methods share. “Accumulation peak” is the "
        "same measure read before `fisher_inv`.",
        f"- Runs on {ref_m} gradients: best of {a['repeats']} interleaved repeats (ours' runs "
        f"on {ref_m} skip the inversion; their extrapolation reuses the inversion time of the "
        f"m = {big_m} run, which does not depend on m).",
        "",
    ]  # fmt: skip
    L += [f"## Results for m = {big_m}", ""]
    L += [
        "| method | chunk | inv_chunk | allocator | per-gradient (ms), "
        f"m={ref_m} | per-gradient (ms), m={big_m} | setup (s) | inversion (s) | total (s), "
        f"measured at m={big_m} | total (s), extrapolated from m={ref_m} | accumulation peak "
        "(MB) | peak RSS Δ (MB) | peak vs Woodbury | speed-up vs Woodbury: measured / "
        "extrapolated |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for mm, w in s["woodbury"].items():
        L.append(
            f"| Woodbury rank-1 (reference) | – | – | {allocator(int(mm))} | "
            f"{w['per_grad_s'] * 1e3:.1f} | – | {w['setup_s']:.2f} | – | – | "
            f"{w['total_projected_s']:.1f} | {fmt_mb(w['peak_delta_bytes'])} | "
            f"{fmt_mb(w['peak_delta_bytes'])} | 1.00 | 1 |"
        )
    for r in s["rows"]:
        mark = " ✓" if r["equal_memory"] else ""
        L.append(
            f"| ours{' (tuned)' if r['tuned'] else ''} | {r['chunk']} | {r['inv_chunk']} | "
            f"{allocator(r['mmap'])} | {r['per_grad_s_ref'] * 1e3:.1f} | "
            f"{r['per_grad_s_full'] * 1e3:.1f} | {r['setup_s']:.2f} | {r['inv_s']:.1f} | "
            f"{r['total_measured_s']:.1f} | {r['total_projected_s']:.1f} | "
            f"{fmt_mb(r['peak_loop_delta_bytes'])} | {fmt_mb(r['peak_delta_bytes'])} | "
            f"{r['peak_vs_woodbury']:.2f}{mark} | "
            f"{r['ratio_measured']:.1f}× / {r['ratio_projected']:.1f}× |"
        )
    L += [
        "",
        f"✓ = equal memory: peak at most {EQUAL_MEMORY_TOL:.0%} above Woodbury's (same "
        f"allocator setting). Woodbury's total is extrapolated: setup + {big_m} × its "
        f"per-gradient time on {ref_m} gradients. Ours “measured” is its actual run on all "
        f"{big_m} gradients (setup + add_grad loop + inversion); “extrapolated” projects ours' "
        f"{ref_m}-gradient run the same way as Woodbury's, plus the inversion.",
        "",
    ]  # fmt: skip
    L += ["## Goal: ≥ 3× faster at equal memory, same result to 1e-4 relative", ""]
    L += goal_lines("`src` defaults, chunk swept", s["equal_memory_default"], s,
                    s["goal_met_default"], big_m)  # fmt: skip
    L += goal_lines("Best configuration incl. tuned", s["equal_memory_any"], s,
                    s["goal_met_any"], big_m)  # fmt: skip
    f = s["fastest"]
    L += [
        f"- Fastest regardless of memory: {f['key']}: {f['ratio_measured']:.1f}× at "
        f"{f['peak_vs_woodbury']:.2f}× Woodbury's peak.",
    ]  # fmt: skip
    ow, ods, wds = chk["ours_vs_woodbury"], chk["ours_vs_dense64"], chk["woodbury_vs_dense64"]
    ok = max(ow["max_rel"], ow["fro_rel"]) <= 1e-4
    L += [
        f"- Accuracy on the same {chk['m']} gradients, all {nb:,} blocks (ours with chunk = "
        f"{chk['chunk']}, inv_chunk = {chk['inv_chunk']}): ours vs Woodbury max|A−B|/max|B| = {ow['max_rel']:.2e}, "
        f"‖A−B‖_F/‖B‖_F = {ow['fro_rel']:.2e} → "
        + ("**within 1e-4**." if ok else "**over 1e-4**."),
        f"- Against float64 `torch.linalg.inv(λI + GᵀG/m)` on {chk['dense_blocks']} sampled "
        "blocks (incl. the zero-padded last one; condition numbers median "
        f"{chk['cond_median']:.3g}, max {chk['cond_max']:.3g}): ours max-rel "
        f"{ods['max_rel']:.2e}, Frobenius {ods['fro_rel']:.2e}; Woodbury (fp32) max-rel "
        f"{wds['max_rel']:.2e}, Frobenius {wds['fro_rel']:.2e}. At this gradient scale and λ "
        "the fp32 reference is itself accurate, so the comparison is meaningful.",
    ]  # fmt: skip
    for key, r in res["runs"]["ours_full"].items():
        if "vs_dense64" in r:
            v = r["vs_dense64"]
            L.append(
                f"- Ours at the full m = {big_m} ({key}) vs float64 on {v['blocks']} blocks "
                f"(condition median {v['cond_median']:.3g}): max-rel {v['max_rel']:.2e}, "
                f"Frobenius {v['fro_rel']:.2e}."
            )
    L += ["", "## Observations", ""]
    base = sorted((r for r in s["rows"] if not r["tuned"]), key=lambda r: r["chunk"])
    if len(base) > 1:
        per = ", ".join(f"{r['chunk']}: {r['per_grad_s_full'] * 1e3:.1f}" for r in base)
        flat = min(base, key=lambda r: r["per_grad_s_full"])["chunk"] != base[-1]["chunk"]
        L.append(
            f"- Ours' per-gradient cost by chunk (m = {big_m}, ms): {per}."
            + (" A larger chunk did not make it cheaper, so the flush is not limited by the "
               "accumulator's memory traffic." if flat else "")
        )  # fmt: skip
    if len(s["woodbury"]) > 1:
        w0, wm = s["woodbury"]["0"], [w for k, w in s["woodbury"].items() if k != "0"][0]
        L.append(
            f"- Woodbury with {allocator(wm['mmap'])}: {wm['per_grad_s'] * 1e3:.1f} ms/gradient "
            f"and peak {fmt_mb(wm['peak_delta_bytes'])} MB, vs {w0['per_grad_s'] * 1e3:.1f} ms "
            f"and {fmt_mb(w0['peak_delta_bytes'])} MB with the glibc default"
            + (" (likely page faults: each gradient-sized temporary is then a fresh mapping)."
               if wm["per_grad_s"] > 1.05 * w0["per_grad_s"] else ".")
        )  # fmt: skip
    L += [
        "- The accumulation peak is set by the accumulator plus the `chunk` buffer "
        f"(4·chunk·d = {4 * a['d'] / MB:.1f} MB per unit of chunk); `fisher_inv` adds its float64 "
        "temporaries (∝ inv_chunk) on top. With the glibc default allocator, freed mid-size "
        "temporaries can stay in RSS; compare the allocator rows.",
        "",
        "## What was extrapolated, and caveats",
        "",
        f"- Woodbury ran on {ref_m} gradients only (each update sweeps the whole {acc_mb} MB "
        f"F⁻¹ twice); its m = {big_m} total is setup + m × per-gradient time. Every update does "
        "identical work, so the per-gradient cost does not depend on i; noise from other "
        "processes is the main error.",
        f"- Ours ran at the full m = {big_m} (“measured”) and on the same {ref_m} gradients "
        "(“extrapolated”); compare the two per-gradient columns to judge the extrapolation.",
        "- Woodbury's peak memory does not grow with m (F⁻¹ plus one gradient's temporaries), "
        f"so its {ref_m}-gradient peak stands for m = {big_m}.",
        "- The timed runs were single (m = " + f"{big_m}) or best of {a['repeats']} (m = "
        f"{ref_m}) on a small VM; see `fisher.json` for every raw number.",
        "",
    ]  # fmt: skip
    path.write_text("\n".join(L))


def orchestrate(args: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    src = {"defaults": src_defaults(), "git_start": git_state(), "sha_start": src_fingerprint()}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "fisher_quick" if args.quick else "fisher"
    configs = [
        {"chunk": c, "inv_chunk": src_defaults()["inv_chunk"], "mmap": 0, "tuned": False}
        for c in args.chunk
    ]  # fmt: skip
    for spec in args.tuned:
        c, ic, mm = ([int(x) for x in spec.split(":")] + [0])[:3]
        configs.append({"chunk": c, "inv_chunk": ic, "mmap": mm, "tuned": True})
    mmaps = sorted({c["mmap"] for c in configs})
    runs: dict[str, Any] = {
        "woodbury": {str(mm): [] for mm in mmaps},
        "ours_ref": {config_key(c): [] for c in configs},
        "ours_full": {},
    }
    n_total = args.repeats * (len(mmaps) + len(configs)) + len(configs) + 1
    # A journal of finished measurements, so that --resume can finish a run that was killed.
    sig = {k: v for k, v in vars(args).items() if k not in ("out", "quiet", "resume")}
    sig = json.dumps({**sig, "src_sha": src["sha_start"]}, sort_keys=True)
    journal_path = Path(__file__).parent / ".cache" / f"{stem}_journal.json"
    journal = {"sig": sig, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "steps": {}}
    if args.resume and journal_path.exists():
        old = json.loads(journal_path.read_text())
        if old["sig"] == sig:
            journal = old
        else:
            log(args, "--resume: the journal is for other settings or another src; starting over")
    journal_path.parent.mkdir(parents=True, exist_ok=True)
    reused: list[str] = []
    k = 0

    def step(name: str, desc: str, *a: Any, **kw: Any) -> dict[str, Any]:
        nonlocal k
        k += 1
        if name in journal["steps"]:
            log(args, f"[{k}/{n_total}] {desc}: reused from the journal")
            reused.append(name)
            return journal["steps"][name]
        log(args, f"[{k}/{n_total}] {desc}")
        journal["steps"][name] = r = run_worker(args, *a, **kw)
        journal_path.write_text(json.dumps(journal))
        return r

    # Interleave the short runs, so that a burst of outside load hits both methods alike.
    m_ref = args.ref_grads
    for rep in range(args.repeats):
        for mm in mmaps:
            r = step(f"woodbury/{mm}/{rep}", f"Woodbury, {allocator(mm)}, m={m_ref} (repeat "
                     f"{rep + 1})", "woodbury", m_ref, {"mmap": mm})  # fmt: skip
            runs["woodbury"][str(mm)].append(r)
        for cfg in configs:
            key = config_key(cfg)
            r = step(f"ref/{key}/{rep}", f"ours {key}, m={m_ref} (repeat {rep + 1})", "ours",
                     m_ref, cfg, no_inv=True)  # fmt: skip
            runs["ours_ref"][key].append(r)
    for j, cfg in enumerate(configs):
        key = config_key(cfg)
        runs["ours_full"][key] = step(f"full/{key}", f"ours {key}, m={args.num_grads}", "ours",
                                      args.num_grads, cfg, verify=j == 0)  # fmt: skip
    check = step("check", f"accuracy: both methods on the same {m_ref} gradients", "check", m_ref)

    every = [r for rs in runs["woodbury"].values() for r in rs]
    every += [r for rs in runs["ours_ref"].values() for r in rs]
    every += [*runs["ours_full"].values(), check]
    src["git_end"] = git_state()
    # Each worker imported src afresh: all of them must have measured the same file.
    src["shas_measured"] = sorted({r["src_sha"] for r in every if "src_sha" in r})
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "src": src,
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "machine": machine_info(),
        "args": {k: v for k, v in vars(args).items() if not k.startswith("worker")},
        "configs": configs,
        "runs": runs,
        "check": check,
        "resumed": {"journal_started": journal["started"], "steps_reused": reused},
    }
    res["summary"] = summarize(args, res)
    res["elapsed_min"] = (time.perf_counter() - t_start) / 60
    (out_dir / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(out_dir / f"{stem}.md", res)
    journal_path.unlink(missing_ok=True)
    log(args, f"wrote {out_dir / (stem + '.md')} and {stem}.json")


def render_only(args: argparse.Namespace) -> None:
    """Re-render fisher.md from fisher.json (same numbers; only the report code may differ)."""
    path = Path(args.out) / ("fisher_quick.json" if args.quick else "fisher.json")
    res = json.loads(path.read_text())
    res["summary"] = summarize(argparse.Namespace(**res["args"]), res)
    res["rendered_by"] = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    path.write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(path.with_suffix(".md"), res)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--d", type=int, default=BERT_BASE_LAYER, help="weights in the layer")
    p.add_argument("--block-size", type=int, default=50)
    p.add_argument("--num-grads", type=int, default=1024, help="m; ours runs all of it")
    p.add_argument("--ref-grads", type=int, default=64, help="m actually run for Woodbury")
    p.add_argument("--chunk", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument(
        "--tuned", nargs="*", default=["4:128", "2:128", "4:128:1048576"],
        metavar="CHUNK:INV_CHUNK[:MMAP_THRESHOLD]",
        help="extra ours configurations: EmpiricalFisher(chunk=), fisher_inv(inv_chunk=), and"
        " optionally a fixed MALLOC_MMAP_THRESHOLD_ (Woodbury is then also run with it)",
    )  # fmt: skip
    p.add_argument("--damp", type=float, default=1e-7, help="λ")
    p.add_argument("--scale", type=float, default=1e-3, help="std of the random gradients")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="repeats of the m=--ref-grads runs")
    p.add_argument("--dense-blocks", type=int, default=64, help="blocks for the float64 check")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (d=100,003, m=64)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--resume", action="store_true",
        help="reuse measurements journaled by an interrupted run with the same settings and src",
    )  # fmt: skip
    p.add_argument(
        "--render-only", action="store_true",
        help="rebuild the markdown (and summary) from an existing --out JSON; measures nothing",
    )  # fmt: skip
    # Internal: one measurement in this process.
    p.add_argument("--worker", choices=["woodbury", "ours", "check"], help=argparse.SUPPRESS)
    p.add_argument("--worker-m", type=int, help=argparse.SUPPRESS)
    p.add_argument("--worker-chunk", type=int, default=16, help=argparse.SUPPRESS)
    p.add_argument("--worker-inv-chunk", type=int, default=512, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--worker-verify", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-no-inv", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.d, args.num_grads, args.ref_grads = 100_003, 64, 16  # d not a multiple of B
        args.chunk = [c for c in args.chunk if c <= args.ref_grads] or [4]
    chunks = args.chunk + [int(t.split(":")[0]) for t in args.tuned]
    if args.ref_grads % math.lcm(*chunks):
        p.error("--ref-grads must be a multiple of every --chunk (whole flushes per run)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.render_only:
        render_only(args)
        return
    if args.worker is None:
        orchestrate(args)
        return
    res = worker_check(args) if args.worker == "check" else worker_time(args)
    Path(args.worker_out).write_text(json.dumps(res))


if __name__ == "__main__":
    main()
