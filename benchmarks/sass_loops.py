"""Instruction counts of the CUDA kernels' main loops, from the machine code nvcc makes for a GPU (default sm_90, the
H200's), on any machine with nvcc: no GPU is needed.

For each kernel the longest loop (the span of its farthest backward branch) is counted: its instructions, and how
many of them are exponentials (MUFU), global loads (LDG) and stores (STG). Divide by the elements one trip handles to
get instructions per element; against the GPU's issue rate (4 x 32 lanes per clock per multiprocessor) that says
whether a loop can keep up with memory. A static count, not a timing: branches not taken are counted too.

    python benchmarks/sass_loops.py [--arch 90] [--source csrc/cuda/kl_divergence.cu] [--match backward]

Needs nvcc (CUDACXX or on PATH) and cuobjdump (on PATH, or the copy that Triton's NVIDIA backend bundles).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTRUCTION = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
BRANCH = re.compile(r"\bBRA\s+(0x[0-9a-f]+)")
DTYPES = {"f": "float32", "d": "float64", "6__half": "float16", "13__nv_bfloat16": "bfloat16"}


@dataclass
class Loop:
    kernel: str  # kernel name with its template arguments, readable
    instructions: int
    exponentials: int
    loads: int
    stores: int


def tool(name: str, env_var: str | None = None) -> str | None:
    """A CUDA tool from the environment, PATH, or Triton's bundled copies."""
    if env_var and os.environ.get(env_var):
        return os.environ[env_var]
    found = shutil.which(name)
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(bundled) if bundled.exists() else None


def readable(mangled: str) -> str:
    """'kl_backward_chunk_kernel<student, teacher, bfloat16>' from the mangled name of a kernel template."""
    # a mangled identifier is its length, then its characters (the digits may follow a hash's); find the kernel's
    candidates = ((run.end(), int(run.group()[k:])) for run in re.finditer(r"\d+", mangled)
                  for k in range(len(run.group())))
    for start, length in candidates:
        name = mangled[start:start + length]
        if name.endswith("_kernel") and mangled[start + length:start + length + 1] == "I":
            rest = mangled[start + length + 1:]
            break
    else:
        return mangled
    flags = re.findall(r"Lb([01])E", rest)
    parts = []
    if flags:
        parts += [side for side, flag in zip(("student", "teacher"), flags) if flag == "1"]
        rest = rest[rest.rfind("Lb") + 4:]
    for code, dtype in DTYPES.items():
        if rest.startswith(code):
            parts.append(dtype)
            break
    return f"{name}<{', '.join(parts)}>"


def opcode(instruction: str) -> str:
    """'LDG.E.U16' of '@P0 LDG.E.U16 R7, desc[UR4][R2.64]'."""
    words = instruction.split()
    return words[1] if words[0].startswith("@") else words[0]


def main_loops(sass: str) -> list[Loop]:
    loops = []
    for block in sass.split("Function : ")[1:]:
        mangled = block.split("\n", 1)[0].strip()
        code = [(int(m.group(1), 16), m.group(2)) for m in map(INSTRUCTION.match, block.split("\n")) if m]
        spans = [(int(b.group(1), 16), address) for address, op in code
                 if (b := BRANCH.search(op)) and int(b.group(1), 16) < address]
        if not spans:
            continue
        start, end = max(spans, key=lambda span: span[1] - span[0])
        body = [opcode(op) for address, op in code if start <= address <= end]
        loops.append(Loop(readable(mangled), len(body), sum(op.startswith("MUFU") for op in body),
                          sum(op.startswith("LDG") for op in body), sum(op.startswith("STG") for op in body)))
    return sorted(loops, key=lambda loop: loop.kernel)


def compile_and_count(source: Path, arch: int) -> list[Loop]:
    nvcc, cuobjdump = tool("nvcc", "CUDACXX"), tool("cuobjdump")
    if nvcc is None or cuobjdump is None:
        raise FileNotFoundError(f"needs nvcc and cuobjdump (found nvcc={nvcc}, cuobjdump={cuobjdump})")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernels.cubin"
        subprocess.run([nvcc, "-std=c++17", "-O3", f"-arch=sm_{arch}", "-cubin", "-I", str(ROOT / "csrc"),
                        str(source), "-o", str(cubin)], check=True)
        sass = subprocess.run([cuobjdump, "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout
    return main_loops(sass)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, as nvcc's sm_XX (default 90)")
    parser.add_argument("--source", type=Path, default=ROOT / "csrc" / "cuda" / "kl_divergence.cu",
                        help="a .cu file (default csrc/cuda/kl_divergence.cu)")
    parser.add_argument("--match", default="", help="only kernels whose readable name contains this")
    args = parser.parse_args(argv)
    try:
        loops = compile_and_count(args.source, args.arch)
    except (FileNotFoundError, subprocess.CalledProcessError) as error:
        print(f"sass_loops: {error}", file=sys.stderr)
        return 2
    print(f"| kernel (sm_{args.arch}) | loop instructions | MUFU | LDG | STG |")
    print("|---|---|---|---|---|")
    for loop in loops:
        if args.match in loop.kernel:
            print(f"| {loop.kernel} | {loop.instructions} | {loop.exponentials} | {loop.loads} | {loop.stores} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
