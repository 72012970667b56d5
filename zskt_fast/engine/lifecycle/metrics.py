"""Run outputs: a JSON-lines metrics log (optionally mirrored to TensorBoard) and grids of generated images."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ...common import STORAGE_FAILURES, StorageError, atomic_write
from ...data import denormalise


def _complete_before(line: str, iteration: int) -> bool:
    """A whole record (not a line torn by a kill or a full disk) of an iteration up to `iteration`."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("iteration", 0) <= iteration


class MetricsLog:
    """Appends one JSON object per line. On resume, records past the checkpoint's iteration (written by the run that
    was killed) and a torn last line are dropped, so that the log reads as one uninterrupted run."""

    def __init__(self, path: str | os.PathLike, *, keep_until: int | None = None, tensorboard_dir: str | None = None):
        self.path = Path(path)
        if keep_until is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if _complete_before(line, keep_until)]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif keep_until is None:
            self.path.write_text("")
        self.writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self.writer = SummaryWriter(tensorboard_dir, purge_step=keep_until)

    def write(self, record: dict) -> None:
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as error:
            if error.errno in STORAGE_FAILURES:  # a torn last line is dropped on resume
                raise StorageError(f"cannot write {self.path}: {STORAGE_FAILURES[error.errno]}") from error
            raise
        if self.writer is not None:
            for key, value in record.items():
                if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, record["iteration"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@torch.no_grad()
def save_image_grid(images: torch.Tensor, path: str | os.PathLike, *, mean, std, min_size: int = 32,
                    columns: int = 8) -> None:
    """Un-normalises with the data set's mean and std, stretches each image to [0, 1] (generated images have no fixed
    range), enlarges small ones with nearest-neighbour pixels, and writes a PNG grid `columns` wide."""
    from PIL import Image

    images = denormalise(images.float().cpu(), mean, std)
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    high = images.amax(dim=(1, 2, 3), keepdim=True)
    images = (images - low) / (high - low).clamp_min(1e-8)
    if images.shape[-1] < min_size:
        images = F.interpolate(images, scale_factor=math.ceil(min_size / images.shape[-1]), mode="nearest")
    n, c, h, w = images.shape
    rows = math.ceil(n / columns)
    grid = torch.ones(c, rows * (h + 1) + 1, columns * (w + 1) + 1)  # one-pixel white borders
    for i, image in enumerate(images):
        top, left = 1 + (i // columns) * (h + 1), 1 + (i % columns) * (w + 1)
        grid[:, top:top + h, left:left + w] = image
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels[..., 0] if c == 1 else pixels)
    atomic_write(path, lambda f: image.save(f, format="PNG"))


class MetricsWindow:
    """Sums of the zero-shot loop's per-iteration metrics on the device, read (one host synchronisation) only when
    logged. Its state goes into checkpoints, so that a window cut by a checkpoint continues exactly after a resume."""
    NAMES = ("loss_generator", "loss_student", "teacher_max_prob", "student_max_prob")

    def __init__(self, device: torch.device):
        self.sums = torch.zeros(len(self.NAMES), device=device)
        self.count = 0

    @torch.no_grad()
    def add(self, outputs: dict) -> None:
        max_p_T = torch.softmax(outputs["teacher_logits"].float(), 1).amax(1).mean()
        max_p_S = torch.softmax(outputs["student_logits"].float(), 1).amax(1).mean()
        self.sums += torch.stack([outputs["loss_G"].float(), outputs["loss_S"].float(), max_p_T, max_p_S])
        self.count += 1

    def pop(self) -> dict:
        values = (self.sums / max(self.count, 1)).tolist()
        self.sums.zero_()
        self.count = 0
        return dict(zip(self.NAMES, values))

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu().clone(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.sums.copy_(state["sums"])
        self.count = int(state["count"])
