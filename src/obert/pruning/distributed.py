"""The Fisher sharded over ranks (torchrun): who owns which Fisher blocks, and the collectives.

With R ranks every target tensor's ⌈d/B⌉ Fisher blocks are cut into R contiguous ranges; rank r
owns range r of every tensor, so each rank holds and inverts ≈ 1/R of the Fisher. A block range
is a contiguous slice of the row-major flattened weight (blocks are consecutive B-weight runs),
so a shard is just a slice and the Fisher code needs no change. One rank is the same code with
R = 1 and no collective: ``FisherShards`` holds those decisions for the pruner (which slice is
this rank's, the gradient exchange, the gather of the results), which reads the same for any R.

Per gradient round each rank computes one gradient on its own data; ``exchange`` (all-to-all)
hands every rank its slice of all R gradients. Saliencies and updated weights of the shards are
``gather``-ed by every rank, so all ranks take the same pruning decision from the same numbers
and end with bitwise identical weights; ``agree`` checks a digest of them.

Where the collectives' tensors live: on ``Comm.device``, the device the default process group's
backend takes (``collective_device``): the current CUDA device under NCCL, which accepts only
CUDA tensors (a CPU tensor fails there with an error that blames "another rank"), the CPU under
gloo. ``Comm`` moves every tensor there before a collective and hands results back on the
device of the caller's data. The alternative, a gloo side group beside accelerate's NCCL group
so that the Fisher's traffic could stay on the CPU, was not taken: it is a second process group
to create, time out and destroy on every rank, and on GPU the gradients and the Fisher already
live on the GPU, so NCCL moves them without a round trip through host memory.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from obert.errors import ObertError
from obert.pruning.fisher import num_blocks

TIMEOUT = datetime.timedelta(minutes=int(os.environ.get("OBERT_DIST_TIMEOUT_MIN", "30")))


def collective_device(backend: str) -> torch.device:
    """The device whose tensors the process group's collectives take: the current CUDA device
    for NCCL (it takes CUDA tensors only), else the CPU (gloo; also a mixed backend such as
    "cpu:gloo,cuda:nccl", whose CPU part takes CPU tensors)."""
    entries = [e.strip() for e in str(backend).lower().split(",")]
    by_device = dict(e.split(":", 1) for e in entries if ":" in e)
    if "cpu" not in by_device and (entries == ["nccl"] or by_device.get("cuda") == "nccl"):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass(frozen=True)
class Comm:
    """This process's place among the ranks; ``world == 1`` runs no collective.

    ``device`` is where every tensor of a collective lives (``collective_device``): tensors are
    moved there before the collective, and results come back on the device of the caller's
    data, so callers never think about the backend."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def current(cls) -> Comm:
        """The initialised default process group, else a single rank."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(),
                       collective_device(dist.get_backend()))
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def exchange(self, send: list[Tensor]) -> list[Tensor]:
        """All-to-all: ``send[s]`` goes to rank s; returns what each rank sent to this one (on
        ``send[0]``'s device)."""
        if self.world == 1:
            return send
        import torch.distributed as dist

        home = send[0].device
        sizes = torch.tensor([t.numel() for t in send], dtype=torch.long, device=self.device)
        recv_sizes = torch.empty_like(sizes)
        _run("all_to_all of the sizes", dist.all_to_all_single, recv_sizes, sizes)
        counts = recv_sizes.tolist()
        flat = torch.cat([t.reshape(-1).to(self.device) for t in send])
        out = flat.new_empty(sum(counts))
        _run("all_to_all of the gradients", dist.all_to_all_single, out, flat, counts,
             sizes.tolist())
        return [p.to(home) for p in out.split(counts)]

    def gather(self, x: Tensor) -> list[Tensor]:
        """All-gather of a 1-D tensor whose length may differ between ranks (on x's device)."""
        if self.world == 1:
            return [x]
        import torch.distributed as dist

        n = torch.tensor([x.numel()], dtype=torch.long, device=self.device)
        sizes = [torch.empty_like(n) for _ in range(self.world)]
        _run("all_gather of the sizes", dist.all_gather, sizes, n)
        counts = torch.cat(sizes).tolist()
        mine = x.to(self.device)
        padded = torch.cat([mine, mine.new_zeros(max(counts) - x.numel())])
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        _run("all_gather of the shards", dist.all_gather, parts, padded)
        return [p[:c].to(x.device) for p, c in zip(parts, counts, strict=True)]

    def broadcast(self, x: Tensor, src: int = 0) -> None:
        """Overwrite ``x`` on every rank with rank ``src``'s values."""
        if self.world == 1:
            return
        import torch.distributed as dist

        buf = x.detach().to(self.device).contiguous()
        _run("broadcast of the weights", dist.broadcast, buf, src)
        if buf.device != x.device or buf.data_ptr() != x.data_ptr():
            x.copy_(buf)

    def finish(self) -> None:
        """Wait for every rank (rank 0 may still be writing), then close the process group:
        a rank that exits with gloo's threads still running aborts ("terminate called")."""
        if self.world == 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            # NCCL's barrier otherwise guesses the GPU from the rank (and warns)
            ids = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            _run("the final barrier", lambda: dist.barrier(**ids))
            dist.destroy_process_group()

    def agree(self, digest: str, what: str) -> None:
        """Raise unless every rank computed the same ``digest`` of ``what``."""
        if self.world == 1:
            return
        import torch.distributed as dist

        mine = torch.tensor(list(bytes.fromhex(digest)[:16]), dtype=torch.long,
                            device=self.device)
        parts = [torch.empty_like(mine) for _ in range(self.world)]
        _run(f"all_gather of the {what} checksums", dist.all_gather, parts, mine)
        if any(not torch.equal(p, parts[0]) for p in parts):
            raise ObertError(f"ranks disagree on the {what} after a pruning step (checksums "
                             f"differ); this is a bug: report it with the torch version")


def _run(what: str, fn, *args) -> None:
    """A collective that cannot hang silently: the process group's timeout turns into one line."""
    try:
        fn(*args)
    except RuntimeError as e:  # DistBackendError and gloo/NCCL timeouts are RuntimeErrors
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ObertError(f"{what} failed on this rank ({first}): another rank stopped or "
                         "stalled; see its log") from None


def init_from_env(cuda: bool) -> Comm:
    """Start the default process group when launched by torchrun (WORLD_SIZE > 1): NCCL on GPU,
    gloo on CPU, with a timeout (``OBERT_DIST_TIMEOUT_MIN``, default 30 minutes)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if cuda else "gloo"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=TIMEOUT)
    return Comm.current()


def weights_digest(weights: dict[str, Tensor]) -> str:
    """sha256 over the raw bytes of the weights, in name order (bitwise identity)."""
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode())
        h.update(weights[name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class BlockShards:
    """Which slice of each flattened target tensor a rank's Fisher covers.

    Tensor t with d elements has nb = ⌈d/B⌉ blocks; rank r owns blocks [nb·r/R, nb·(r+1)/R),
    i.e. elements [lo·B, min(hi·B, d)). Ranges of one tensor tile it, in rank order.
    """

    def __init__(self, numels: dict[str, int], block_size: int, world: int) -> None:
        self.numels, self.block_size, self.world = numels, block_size, world
        self.ranges: dict[str, list[tuple[int, int]]] = {}
        for name, d in numels.items():
            nb = num_blocks(d, block_size)
            cuts = [nb * r // world for r in range(world + 1)]
            self.ranges[name] = [(min(a * block_size, d), min(b * block_size, d))
                                 for a, b in zip(cuts, cuts[1:], strict=False)]

    def span(self, name: str, rank: int) -> tuple[int, int]:
        return self.ranges[name][rank]

    def numel(self, rank: int) -> int:
        """Weights in rank's shard, over all tensors."""
        return sum(b - a for r in self.ranges.values() for a, b in [r[rank]])

    def slices(self, flat: dict[str, Tensor], rank: int) -> Tensor:
        """Rank's slices of every tensor (flattened), concatenated in name order."""
        return torch.cat([flat[n].reshape(-1)[slice(*self.span(n, rank))] for n in self.ranges])

    def split(self, joined: Tensor, rank: int, unit: int = 1) -> dict[str, Tensor]:
        """Inverse of ``slices``: rank's concatenated slices back into a dict. ``unit`` = k
        reads per-group values (one per k weights; shard edges are multiples of B, so of k)."""
        sizes = [(self.span(n, rank)[1] - self.span(n, rank)[0]) // unit for n in self.ranges]
        return dict(zip(self.ranges, joined.split(sizes), strict=True))

    def assemble(self, parts: list[Tensor], unit: int = 1) -> dict[str, Tensor]:
        """Whole flattened tensors from every rank's concatenated slices (``parts[r]``)."""
        per_rank = [self.split(p, r, unit) for r, p in enumerate(parts)]
        return {n: torch.cat([per_rank[r][n] for r in range(self.world)]) for n in self.ranges}


class FisherShards(BlockShards):
    """The sharding as the pruner sees it: this rank's slice of each target (``own``), the
    gradient exchange that hands it those slices of every rank's gradients (``exchange_grads``),
    and the gather of every rank's per-slice results into whole tensors (``assemble``). One rank
    owns every block and moves nothing, so the pruner reads the same for 1 and R ranks."""

    def __init__(self, numels: dict[str, int], block_size: int, comm: Comm) -> None:
        super().__init__(numels, block_size, comm.world)
        self.comm = comm

    def own(self, name: str) -> tuple[int, int]:
        """This rank's element range of ``name``, flattened."""
        return self.span(name, self.comm.rank)

    def buffer_bytes(self) -> int:
        """The all-to-all's float32 buffers (whole gradient out, R slices in): none on 1 rank."""
        if self.comm.world == 1:
            return 0
        return 4 * (sum(self.numels.values()) + self.comm.world * self.numel(self.comm.rank))

    def exchange_grads(self, grads: dict[str, Tensor] | None) -> list[dict[str, Tensor]]:
        """This rank's slices (flattened, float32) of the gradient of every rank that had one
        this round, given its own flattened ``grads`` (None: it has none left). All ranks call
        it each round; pieces come back on ``comm.device``."""
        if self.comm.world == 1:
            return [] if grads is None else [grads]
        dev, rank = self.comm.device, self.comm.rank
        send = []
        for r in range(self.comm.world):  # one flag element in front: the slice holds a gradient
            if grads is None:
                send.append(torch.zeros(1 + self.numel(r), device=dev))
            else:
                send.append(torch.cat([torch.ones(1, device=dev),
                                       self.slices(grads, r).to(dev, torch.float32)]))
        return [self.split(p[1:], rank) for p in self.comm.exchange(send) if p[0] == 1]

    def assemble_all(self, mine: list[Tensor], unit: int = 1) -> dict[str, Tensor]:
        """Whole flattened tensors, on every rank, from each rank's ``mine``: its slices of the
        targets in name order (``unit`` = k: one value per k weights)."""
        if self.comm.world == 1:
            return dict(zip(self.ranges, mine, strict=True))
        return self.assemble(self.comm.gather(torch.cat(mine)), unit)
