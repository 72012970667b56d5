"""The installed wheel, as a user meets it, outside the source tree: `python wheel_smoke.py core` checks that the
package imports with torch alone and that its three loss ops agree with the plain-PyTorch reference; `python
wheel_smoke.py train RUN_DIR` checks the run folder that `zskt-train --iterations 2` wrote."""
import importlib.util
import json
import sys
from pathlib import Path


def core() -> None:
    import torch

    import zskt_fast
    from zskt_fast.ops import reference

    where = Path(zskt_fast.__file__).resolve()
    assert "site-packages" in where.parts, f"zskt_fast imported from {where}, not from the installed wheel"
    missing = [m for m in ("torchvision", "tqdm", "sklearn", "matplotlib") if importlib.util.find_spec(m)]
    assert not missing, f"the core install should need torch alone, and {missing} are installed"
    assert "cpu" in zskt_fast.available_backends("cpu"), "the compiled CPU kernels did not load"
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 10, generator=gen, requires_grad=True), torch.randn(6, 10, generator=gen)
    fs = [torch.randn(6, 4, 5, 5, generator=gen, requires_grad=True)]
    ft = [torch.randn(6, 8, 5, 5, generator=gen)]
    checks = {
        "kl_divergence": (zskt_fast.kl_divergence(s, t), reference.kl_divergence(s, t)),
        "attention_transfer": (zskt_fast.attention_transfer(fs, ft), reference.attention_transfer(fs, ft)),
        "zskt_student_loss": (zskt_fast.zskt_student_loss(s, t, fs, ft),
                              reference.kl_divergence(s, t) + reference.attention_transfer(fs, ft)),
    }
    for name, (fused, expected) in checks.items():
        torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6, msg=name)
        grads = torch.autograd.grad(fused, [s, *fs], allow_unused=True)
        expected_grads = torch.autograd.grad(expected, [s, *fs], allow_unused=True)
        for a, b in zip(grads, expected_grads):
            if a is not None or b is not None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"{name} gradient")
    print(f"core: zskt_fast {zskt_fast.__version__} from {where.parent}, backends {zskt_fast.available_backends('cpu')}"
          f", {len(checks)} ops equal the reference")


def train(run_dir: str) -> None:
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    assert summary["iterations"] == 2 and 0 <= summary["student_acc"] <= 100, summary
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "student.pt", "generator.pt"):
        assert (Path(run_dir) / name).is_file(), name
    print(f"train: 2 iterations, student accuracy {summary['student_acc']:.2f}%, run folder complete")


if __name__ == "__main__":
    {"core": core, "train": train}[sys.argv[1]](*sys.argv[2:])
