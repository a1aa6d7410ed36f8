"""Load the C++ kernels: the module the package build made, else compile the shipped sources.

The prebuilt module must match the installed torch's ABI; when it is missing (installed without
`--no-build-isolation`) or stale, the same sources are compiled once into a per-torch cache.
`OBERT_ISA=avx512|avx2|scalar` pins the instruction set (the default picks the fastest).
`OBERT_I8_TILE=rows` makes the AVX-512 INT8 kernel walk one output row at a time instead of two
side by side (the same sums; ``set_i8_tile`` switches it at run time, for benchmarks/int8_kernels.py).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from types import ModuleType

from ..errors import ObertError

CSRC = Path(__file__).parent / "csrc"
SOURCES = ["ops.cpp", "kernels_scalar.cpp", "kernels_avx2.cpp", "kernels_avx512.cpp"]
CFLAGS = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno"]


def _jit_build() -> ModuleType:
    import torch
    from torch.utils import cpp_extension

    cache = Path(os.environ.get("OBERT_CACHE", Path.home() / ".cache" / "obert"))
    build_dir = cache / f"kernels-torch{torch.__version__}"
    build_dir.mkdir(parents=True, exist_ok=True)
    return cpp_extension.load(
        name="obert_kernels", sources=[str(CSRC / s) for s in SOURCES],
        extra_cflags=CFLAGS, build_directory=str(build_dir), verbose=False,
    )


@functools.cache
def kernels() -> ModuleType:
    """The kernel module, with OBERT_ISA applied."""
    import torch  # noqa: F401  (loads libtorch and its OpenMP runtime first)

    try:
        from . import _kernels as mod
    except ImportError:
        try:
            mod = _jit_build()
        except Exception as e:  # compiler missing, headers missing, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ObertError(
                f"obert's C++ kernels are not built and could not be compiled ({first}); "
                "install a C++ compiler and reinstall with `pip install --no-build-isolation .`"
            ) from e
    want = os.environ.get("OBERT_ISA", "auto").strip().lower() or "auto"
    try:
        mod.set_isa(want)
    except RuntimeError as e:
        raise ObertError(f"OBERT_ISA={want}: {str(e).splitlines()[0]}") from e
    return mod


def available_isas() -> list[str]:
    """Instruction sets this CPU can run, fastest first (always ends with 'scalar')."""
    return list(kernels().available_isas())


def isa() -> str:
    """The instruction set the kernels use now."""
    return kernels().isa()


def set_isa(name: str) -> None:
    """Use 'auto' (fastest) or one of `available_isas()`; e.g. 'scalar' to test the fallback."""
    try:
        kernels().set_isa(name)
    except RuntimeError as e:
        raise ObertError(str(e).splitlines()[0]) from e
