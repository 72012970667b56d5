"""Install a pinned torch stack into the running environment, sharing another environment's CUDA runtime wheels.

Used by `make test-oldest`. A CUDA build of torch from PyPI pulls in about 3 GB of CUDA runtime wheels (the `nvidia`
namespace package: cuBLAS, cuDNN, NCCL, ...). A second environment for the oldest supported torch would download and
unpack its own copy; this script instead installs torch and torchvision without dependencies, installs their other
dependencies and the requirement files they come with, and links the `nvidia` folder of an environment that already
has the CUDA 13 runtime. Both stacks are CUDA 13 builds, so the shared libraries load under the same names; on a
machine without a GPU they are loaded and never called. A machine with a GPU installs the pins as they are
(`pip install -r requirements-oldest.txt`).

    python tools/install_sharing_cuda.py requirements-oldest.txt --cuda-from .venv
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

# Distributions whose files are the CUDA runtime itself, found in the shared `nvidia` folder instead.
CUDA_RUNTIME_PREFIXES = ("nvidia-", "cuda-toolkit")


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", *args], check=True)


def read_requirements(path: Path) -> tuple[list[str], list[str]]:
    """The file's own requirement lines, and the requirement files it includes with `-r`."""
    pins, includes = [], []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            includes.append(str(path.parent / line.split(maxsplit=1)[1]))
        elif line.startswith("-"):
            raise SystemExit(f"{path}: option lines other than -r are not supported here: {line!r}")
        else:
            pins.append(line)
    return pins, includes


def dependencies_without_cuda_runtime(distributions: list[str]) -> list[str]:
    """The requirements of the given installed distributions that apply here, less the CUDA runtime wheels and less
    the distributions themselves (naming them again would make pip resolve their CUDA dependencies)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    own = {canonicalize_name(d) for d in distributions}
    needed = []
    for distribution in distributions:
        for text in importlib.metadata.requires(distribution) or []:
            requirement = Requirement(text)
            name = canonicalize_name(requirement.name)
            if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
                continue
            if name in own or name.startswith(CUDA_RUNTIME_PREFIXES):
                continue
            requirement.marker = None
            needed.append(str(requirement))
    return needed


def site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['platlib'])"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def link_cuda_runtime(source_env: Path) -> None:
    source_python = source_env / "bin" / "python"
    if not source_python.exists():
        raise SystemExit(f"--cuda-from {source_env}: no environment there (no bin/python); create it first "
                         "(make setup)")
    source = site_packages(source_python) / "nvidia"
    if not source.is_dir():
        raise SystemExit(f"--cuda-from {source_env}: it has no CUDA runtime wheels ({source} is missing); it must "
                         "hold a CUDA 13 build of torch")
    target = Path(sysconfig.get_paths()["platlib"]) / "nvidia"
    if target.is_dir() and not target.is_symlink():
        return  # this environment has CUDA runtime wheels of its own
    if target.is_symlink():
        target.unlink()
    os.symlink(source, target, target_is_directory=True)
    print(f"CUDA runtime wheels shared from {source} (pip's complaint above that torch's nvidia-* and cuda-toolkit "
          "requirements are not installed is expected)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("requirements", type=Path, help="pin file: torch (and torchvision) pins and -r lines")
    parser.add_argument("--cuda-from", type=Path, required=True, metavar="ENV",
                        help="virtual environment whose CUDA runtime wheels (site-packages/nvidia) are shared")
    args = parser.parse_args()

    pins, includes = read_requirements(args.requirements)
    pip("--upgrade", "pip", "packaging")
    # No cache: the wheel is unpacked once here; a cached copy would double the disk it takes.
    pip("--no-deps", "--no-cache-dir", *pins)
    importlib.invalidate_caches()
    from packaging.requirements import Requirement

    names = [Requirement(pin).name for pin in pins]
    pip(*dependencies_without_cuda_runtime(names), *[arg for path in includes for arg in ("-r", path)])
    link_cuda_runtime(args.cuda_from.absolute())
    modules = [name for name in ("torch", "torchvision") if name in names]
    subprocess.run([sys.executable, "-c", f"import {', '.join(modules)}; print('installed:', " +
                    ", ".join(f"'{m}', {m}.__version__" for m in modules) + ")"], check=True)


if __name__ == "__main__":
    main()
