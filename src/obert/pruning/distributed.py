"""The Fisher sharded over ranks (torchrun): who owns which Fisher blocks, and the collectives.

With R ranks every target tensor's ⌈d/B⌉ Fisher blocks are cut into R contiguous ranges; rank r
owns range r of every tensor, so each rank holds and inverts ≈ 1/R of the Fisher. A block range
is a contiguous slice of the row-major flattened weight (blocks are consecutive B-weight runs),
so a shard is just a slice and the Fisher code needs no change. One rank is the same code with
R = 1 and no collective.

Per gradient round each rank computes one gradient on its own data; ``exchange`` (all-to-all)
hands every rank its slice of all R gradients. Saliencies and updated weights of the shards are
``gather``-ed by every rank, so all ranks take the same pruning decision from the same numbers
and end with bitwise identical weights; ``agree`` checks a digest of them.
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


@dataclass(frozen=True)
class Comm:
    """This process's place among the ranks; ``world == 1`` runs no collective."""

    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> Comm:
        """The initialised default process group, else a single rank."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def exchange(self, send: list[Tensor]) -> list[Tensor]:
        """All-to-all: ``send[s]`` goes to rank s; returns what each rank sent to this one."""
        if self.world == 1:
            return send
        import torch.distributed as dist

        sizes = torch.tensor([t.numel() for t in send], dtype=torch.long)
        recv_sizes = torch.empty_like(sizes)
        _run("all_to_all of the sizes", dist.all_to_all_single, recv_sizes, sizes)
        flat = torch.cat([t.reshape(-1) for t in send])
        out = flat.new_empty(int(recv_sizes.sum()))
        _run("all_to_all of the gradients", dist.all_to_all_single, out, flat,
             recv_sizes.tolist(), sizes.tolist())
        return list(out.split(recv_sizes.tolist()))

    def gather(self, x: Tensor) -> list[Tensor]:
        """All-gather of a 1-D tensor whose length may differ between ranks."""
        if self.world == 1:
            return [x]
        import torch.distributed as dist

        n = torch.tensor([x.numel()], dtype=torch.long)
        sizes = [torch.empty_like(n) for _ in range(self.world)]
        _run("all_gather of the sizes", dist.all_gather, sizes, n)
        longest = int(max(s.item() for s in sizes))
        padded = torch.cat([x, x.new_zeros(longest - x.numel())])
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        _run("all_gather of the shards", dist.all_gather, parts, padded)
        return [p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)]

    def broadcast(self, x: Tensor, src: int = 0) -> None:
        """Overwrite ``x`` on every rank with rank ``src``'s values."""
        if self.world == 1:
            return
        import torch.distributed as dist

        buf = x.detach().contiguous()
        _run("broadcast of the weights", dist.broadcast, buf, src)
        if buf.data_ptr() != x.data_ptr():
            x.copy_(buf)

    def finish(self) -> None:
        """Wait for every rank (rank 0 may still be writing), then close the process group:
        a rank that exits with gloo's threads still running aborts ("terminate called")."""
        if self.world == 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            _run("the final barrier", dist.barrier)
            dist.destroy_process_group()

    def agree(self, digest: str, what: str) -> None:
        """Raise unless every rank computed the same ``digest`` of ``what``."""
        if self.world == 1:
            return
        import torch.distributed as dist

        mine = torch.tensor(list(bytes.fromhex(digest)[:16]), dtype=torch.long)
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
