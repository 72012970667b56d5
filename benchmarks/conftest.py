"""Adds what a reader of a results file needs to the pytest-benchmark JSON: versions, threads, GPU and mode."""
import platform

import torch

import zskt_fast


def pytest_benchmark_update_json(config, benchmarks, output_json):
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    from harness import SMOKE

    output_json["zskt_fast"] = {
        "zskt_fast": zskt_fast.__version__, "torch": torch.__version__, "triton": triton_version,
        "cuda": torch.version.cuda, "python": platform.python_version(), "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "smoke": SMOKE,
    }
