"""Builds obert's C++ kernels (obert.runtime._kernels) as a torch C++ extension.

Why a torch extension: the kernels run on PyTorch's own intra-op pool through
at::parallel_for, so two thread pools never contend for the same cores, and tensors cross the
boundary without copies. The ABI must match the installed torch, so install with
`pip install --no-build-isolation` after torch (the Makefile does). Without torch at build time
the package still installs and obert.runtime compiles the same sources on first use.
"""

import os
import sys

from setuptools import setup

CSRC = "src/obert/runtime/csrc"
HEADERS = ["kernels.h", "tiling.h", "attention.h", "att_x86.h"]
SOURCES = [f"{CSRC}/{f}" for f in ("ops.cpp", "kernels_scalar.cpp", "kernels_avx2.cpp",
                                     "kernels_avx512.cpp")]
# -fopenmp compiles at::parallel_for's `omp parallel`; the OpenMP runtime itself is the one
# torch already loaded (libgomp.so.1 from torch/lib), so there is one pool.
CFLAGS = ["-O3", "-std=c++20", "-fopenmp", "-fno-math-errno"]

ext_modules, cmdclass = [], {}
if os.environ.get("OBERT_SKIP_KERNELS") != "1":
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("obert: torch is not importable at build time; the kernels will be compiled on "
              "first use (install with --no-build-isolation to build them now)", file=sys.stderr)
    else:
        ext_modules = [CppExtension("obert.runtime._kernels", SOURCES, extra_compile_args=CFLAGS,
                                    depends=[f"{CSRC}/{h}" for h in HEADERS])]
        cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
