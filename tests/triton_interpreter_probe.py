"""Whether Triton's interpreter can run this package's kernels here: one kernel with the construct they all use, a
loop over a bound known only at run time. Imported (with Triton) only by tests of the Triton backend on the CPU."""
import numpy as np
import torch
import triton
import triton.language as tl


@triton.jit
def _sum_in_blocks(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    total = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n, BLOCK):
        total += tl.load(x_ptr + start + offs, mask=start + offs < n, other=0.0)
    tl.store(out_ptr, tl.sum(total, axis=0))


def problem() -> str | None:
    """None when the probe kernel runs and is right, else why the interpreter cannot be used on this stack."""
    x = torch.arange(10, dtype=torch.float32)
    out = torch.zeros(1)
    try:
        _sum_in_blocks[(1,)](x, out, 10, BLOCK=4)
    except Exception as error:  # noqa: BLE001 - any failure of the interpreter itself
        return (f"Triton {triton.__version__}'s interpreter cannot run a loop over a run-time bound with numpy "
                f"{np.__version__} ({type(error).__name__}: {str(error).splitlines()[0][:120]}); fixed in Triton 3.8, "
                f"and the GPU runs these kernels compiled")
    if out.item() != 45.0:
        return f"Triton {triton.__version__}'s interpreter summed 0..9 to {out.item()} instead of 45"
    return None
