"""Builds zskt_fast._C by driving CMakeLists.txt (the only build description) with the ninja generator. The package's
metadata (name, version, dependencies, entry points) is in pyproject.toml.

Environment:
  ZSKT_CUDA=1 / 0      force the CUDA kernels on or off (default: on when nvcc is found and torch is a CUDA build)
  CUDA_HOME            toolkit root (default: /usr/local/cuda when it exists, else the directory above nvcc)
  TORCH_CUDA_ARCH_LIST CUDA architectures, e.g. "9.0" or "8.0;9.0" (default: 9.0, the H100/H200)
  MAX_JOBS             parallel compile jobs (default: the number of CPUs)
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _cuda_home():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        return Path(home)
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return Path("/usr/local/cuda")
    nvcc = shutil.which("nvcc")
    return Path(nvcc).resolve().parent.parent if nvcc else None


def _cuda_arch_list():
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")
    parts = [a.strip() for a in archs.replace(",", ";").replace(" ", ";").split(";") if a.strip()]
    return ";".join(a.replace(".", "").replace("+PTX", "") for a in parts)


def _cmake():
    """The cmake of this environment's pip package when there is one (newer than most system ones), else PATH's."""
    local = Path(sys.executable).parent / "cmake"
    return str(local) if local.exists() else "cmake"


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = ROOT / "build" / f"cmake-py{sys.version_info[0]}{sys.version_info[1]}"
        build_dir.mkdir(parents=True, exist_ok=True)
        mode = os.environ.get("ZSKT_CUDA", "auto").strip().lower()
        cuda = {"1": "ON", "on": "ON", "true": "ON", "0": "OFF", "off": "OFF", "false": "OFF"}.get(mode, "AUTO")
        args = [
            _cmake(), "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DZSKT_OUTPUT_DIR={ROOT / 'zskt_fast'}",
            f"-DZSKT_CUDA={cuda}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        home = _cuda_home()
        if cuda != "OFF" and home is not None and (home / "bin" / "nvcc").exists():
            args += [f"-DCMAKE_CUDA_COMPILER={home / 'bin' / 'nvcc'}", f"-DCUDAToolkit_ROOT={home}",
                     f"-DCMAKE_CUDA_ARCHITECTURES={_cuda_arch_list()}"]
        subprocess.check_call(args)
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.check_call([_cmake(), "--build", str(build_dir), "-j", jobs])
        # CMake writes the module next to the Python sources (what an editable install imports); a regular install
        # also gets a copy where setuptools expects it.
        built = ROOT / "zskt_fast" / target.name
        if built.resolve() != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, target)


setup(ext_modules=[CMakeExtension("zskt_fast._C")], cmdclass={"build_ext": CMakeBuild})
