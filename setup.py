"""Build: one Cython extension per module, C++17 + OpenMP, compiled against the shared numerics
headers in cuda/ (which also ship inside the package as dsquant/_cuda_src for the GPU path;
dsquant/_cuda.py is the GPU backend module, so the data package needs another name)."""
import glob
import os

import numpy  # build requirement: its C API headers (interop._array)
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CPU = os.path.join("dsquant", "backends", "cpu")
# third_party/xla: XLA's FFI C API header (vendored; the CPU extension's jax.jit handlers)
INCLUDE = [os.path.join(HERE, "cuda"), os.path.join(HERE, CPU), os.path.join(HERE, "dsquant", "interop"),
           os.path.join(HERE, "third_party", "xla")]
# IEEE numerics pinned: the CPU path must give the CUDA path's bits (docs/numerics.md).
COMPILE = ["-std=c++17", "-O3", "-fopenmp", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno",
           "-fno-trapping-math",  # results unchanged; lets the compiler if-convert and vectorize
           "-Wall", "-Wno-unused-function"]
LINK = ["-fopenmp"]
# Release builds carry no debug info (Python's own CFLAGS bring -g: the CPU extension is ~4x larger
# with it). DSQUANT_DEBUG=1 keeps it, for debuggers and sanitizer builds.
if os.environ.get("DSQUANT_DEBUG", "") in ("", "0"):
    COMPILE.append("-g0")                 # after Python's -g, so it wins
    LINK.append("-Wl,--strip-debug")      # and nothing from a static runtime library either
# every header the extensions include: a change to any of them rebuilds both
HEADERS = sorted(glob.glob("cuda/*.cuh") + glob.glob(f"{CPU}/*.hpp") + glob.glob(f"{CPU}/*.inc")
                 + glob.glob("dsquant/interop/*.h") + glob.glob("third_party/xla/xla/ffi/api/*.h"))


def extension(module, numpy_api=False):
    """The Cython extension `module` (a dotted name under dsquant); `numpy_api`: it uses NumPy's C
    API (headers of the build's NumPy, which target every NumPy from pyproject.toml's floor on)."""
    return Extension(
        f"dsquant.{module}",
        [os.path.join("dsquant", *module.split(".")) + ".pyx"],
        include_dirs=INCLUDE + ([numpy.get_include()] if numpy_api else []),
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")] if numpy_api else [],
        language="c++",
        extra_compile_args=COMPILE,
        extra_link_args=LINK,
        depends=HEADERS,
    )


setup(
    packages=["dsquant", "dsquant.core", "dsquant.interop", "dsquant.ops", "dsquant.backends", "dsquant.backends.cpu",
              "dsquant.backends.cuda", "dsquant.distributed", "dsquant.bench", "dsquant.compat", "dsquant.checkpoint",
              "dsquant._cuda_src"],
    package_dir={"dsquant._cuda_src": "cuda"},
    # the kernels' sources for the GPU path, and the types: py.typed plus the stubs of the extensions
    package_data={"dsquant._cuda_src": ["*.cuh", "*.cu"], "dsquant": ["py.typed"],
                  "dsquant.interop": ["_array.pyi"], "dsquant.backends.cpu": ["_cpu.pyi"]},
    ext_modules=cythonize([extension("interop._array", numpy_api=True), extension("backends.cpu._cpu")],
                          compiler_directives={"language_level": "3"}),
    zip_safe=False,
)
