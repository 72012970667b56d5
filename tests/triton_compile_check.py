"""Compiles every Triton kernel launch of the Triton ops for a GPU, on a machine without one (run by
test_triton_compiles.py in a process of its own: Triton's interpreter, which the other tests use, must be off here).

The ops are called on CPU tensors with their launcher replaced by a recorder; each recorded launch (kernel, argument
types, constexprs, warps) is then compiled by Triton for the target named on the command line (default sm_90: the H200
the GPU check runs on) down to a cubin. Triton's interpreter runs the kernels' Python, which accepts what the compiler
refuses (a plain global read inside a kernel, mixed types across loop iterations); this catches those.
Prints one line per distinct launch and "compiled N launches" at the end; exits 1 on the first failure.
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from zskt_fast.kernels.triton import attention_transfer, kl_divergence  # noqa: E402  (registers the Triton ops)

TYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}
launches = []


class Recorder:
    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            launches.append((self.kernel, args, kwargs))
        return launch


def scalar_type(value):
    if isinstance(value, torch.Tensor):
        return "*" + TYPES[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"unexpected kernel argument {value!r}")


def signature_of(kernel, args, kwargs):
    options = {name: kwargs[name] for name in ("num_warps", "num_stages") if name in kwargs}
    constexprs = {name: value for name, value in kwargs.items() if name not in options}
    signature = {}
    for name, value in zip(kernel.arg_names, args):
        signature[name] = scalar_type(value)
    for name in constexprs:
        signature[name] = "constexpr"
    return signature, constexprs, options


def run_ops():
    for module in (kl_divergence, attention_transfer):
        module.launcher = Recorder
    ops = torch.ops.zskt_fast
    for dtype in TYPES:
        for B, C in ((3, 10), (2, 5000), (2, 40000)):  # one program per row; rows cut into chunks
            s, t = torch.randn(B, C).to(dtype), torch.randn(B, C).to(dtype)
            rows, stats_s, stats_t = ops.kl_divergence_forward_triton(s, t, 2.0)
            for mask in ([True, True], [True, False], [False, True]):
                ops.kl_divergence_backward_triton(torch.ones_like(rows), s, t, stats_s, stats_t, 2.0, mask)
        for shape_s, shape_t in (((2, 16, 32, 32), (2, 32, 32, 32)), ((2, 64, 7, 7), (2, 128, 7, 7))):
            xs, xt = torch.randn(shape_s).to(dtype), torch.randn(shape_t).to(dtype)
            sq_diff, q_s, q_t, n_s, n_t = ops.attention_transfer_forward_triton(xs, xt)
            ops.attention_transfer_backward_triton(torch.ones_like(sq_diff), xs, q_s, q_t, n_s)


def main():
    from triton.backends import backends
    if "nvidia" not in backends:
        print(f"SKIP this Triton has no NVIDIA backend (it has {sorted(backends)})")
        sys.exit(3)
    arch = int(sys.argv[1]) if len(sys.argv) > 1 else 90
    target = GPUTarget("cuda", arch, 32)
    run_ops()
    done = set()
    for kernel, args, kwargs in launches:
        signature, constexprs, options = signature_of(kernel, args, kwargs)
        key = (kernel.__name__, tuple(sorted(signature.items())), tuple(sorted(map(str, constexprs.items()))),
               tuple(sorted(options.items())))
        if key in done:
            continue
        done.add(key)
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                      target=target, options=options)
        except Exception as error:  # the compiler's message says where in the kernel
            print(f"FAILED {kernel.__name__} {signature} {constexprs}: {error}")
            sys.exit(1)
        assert compiled.asm.get("cubin"), kernel.__name__
        print(f"ok {kernel.__name__} {constexprs} {options}")
    print(f"compiled {len(done)} launches")


if __name__ == "__main__":
    main()
