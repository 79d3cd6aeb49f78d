"""Builds fastlayernorm._C: the operators, the CPU kernels and, when a CUDA
toolkit is found, the CUDA kernels.

Environment:
  FASTLAYERNORM_CUDA=1|0   force the CUDA build on or off (default: on when
                           nvcc is found through CUDA_HOME / PATH; a GPU is
                           not needed to compile the kernels).
  TORCH_CUDA_ARCH_LIST     target architectures (default "8.0;9.0").
  MAX_JOBS                 parallel compile jobs.
"""
import glob
import os

from setuptools import find_packages, setup

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    forced = os.environ.get("FASTLAYERNORM_CUDA")
    if forced is not None:
        return forced.strip().lower() not in ("0", "false", "off", "")
    return CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))


def sources(pattern: str):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def extension():
    # csrc/api/ is the LibTorch C++ API (built by CMakeLists.txt), not part of
    # the Python extension.
    cpp = [s for s in sources("csrc/**/*.cpp") if not s.startswith(os.path.join("csrc", "api") + os.sep)]
    # py_limited_api=True makes torch define Py_LIMITED_API: one abi3 wheel
    # serves every Python version (the module has no Python functions).
    define_macros = []
    cxx = ["-O3", "-fdiagnostics-color=always"]
    if not want_cuda():
        return CppExtension(
            "fastlayernorm._C", cpp, extra_compile_args={"cxx": cxx},
            define_macros=define_macros, py_limited_api=True,
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-std=c++17", "-lineinfo"]
    if os.environ.get("FASTLAYERNORM_PTXAS_VERBOSE"):
        nvcc.append("-Xptxas=-v")
    return CUDAExtension(
        "fastlayernorm._C", cpp + sources("csrc/cuda/*.cu"),
        extra_compile_args={"cxx": cxx + ["-DFASTLAYERNORM_WITH_CUDA"],
                            "nvcc": nvcc + ["-DFASTLAYERNORM_WITH_CUDA"]},
        define_macros=define_macros, py_limited_api=True,
    )


setup(
    packages=find_packages("python"),
    package_dir={"": "python"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
