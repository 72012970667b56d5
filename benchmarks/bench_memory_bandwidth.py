"""The machine's memory bandwidth as PyTorch sees it, the yardstick of the op benchmarks' "% of copy bandwidth": a
256 MB float32 copy (read + write); 4 MB in smoke mode."""
import torch

from harness import SMOKE, measure


def test_copy_bandwidth(benchmark):
    src = torch.randn((1 if SMOKE else 64) * 1024 * 1024, device="cuda" if torch.cuda.is_available() else "cpu")
    dst = torch.empty_like(src)
    measure(benchmark, lambda: dst.copy_(src), group="memory bandwidth", op="copy", backend="copy", mode="copy",
            floor_bytes=2 * src.numel() * 4)
