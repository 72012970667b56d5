"""The pool of the synthesis-and-pool methods: every round's synthesised batch, kept as 8-bit pixels (as the published
code keeps them, in PNG files), and the random batches the student trains on, augmented as the data set's pretraining
recipe augments real images.

The pool is bounded (`capacity` images; once full, a new batch replaces the oldest images) and is part of the run's
checkpoint: its images, its fill, and the state of the random generator its batches are drawn with, so that a resumed
run draws what the uninterrupted run would have.
"""
from __future__ import annotations

import math

import torch

CROP_PADDING, SHIFT_PADDING = 4, 1  # CIFAR's random crops pad 4 pixels; digits shift by at most one pixel


def pixels_to_bytes(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] as 8-bit pixels (rounded to the nearest level, clamped)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def augment(images: torch.Tensor, augmentation: str, draws: torch.Generator, share: slice | None = None,
            total: int | None = None) -> torch.Tensor:
    """A random crop of each image from its zero-padded version (4 pixels for 'crop' and 'crop+flip', 1 for 'shift')
    and, for 'crop+flip', a horizontal flip of each with probability 1/2; 'none' returns the images. Differentiable in
    the images (FastDFKD augments the generator's output before the teacher). The draws come from `draws` (on the
    CPU), whatever the images' device; with `share`, the images are that slice of a global batch of `total` and take
    its draws (a data-parallel rank)."""
    if augmentation == "none":
        return images
    b, _, h, w = images.shape
    share = share if share is not None else slice(0, b)
    total = total if total is not None else b
    pad = SHIFT_PADDING if augmentation == "shift" else CROP_PADDING
    offsets = torch.randint(0, 2 * pad + 1, (2, total), generator=draws)[:, share].to(images.device)
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = (offsets[0][:, None] + torch.arange(h, device=images.device))[:, :, None]       # [B, H, 1]
    cols = (offsets[1][:, None] + torch.arange(w, device=images.device))[:, None, :]       # [B, 1, W]
    batch = torch.arange(b, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)               # [B, C, H, W]
    if augmentation == "crop+flip":
        flip = (torch.rand(total, generator=draws)[share] < 0.5).to(images.device)[:, None, None, None]
        out = torch.where(flip, out.flip(-1), out)
    return out.contiguous()


def resized_crop(images: torch.Tensor, draws: torch.Generator, share: slice | None = None, total: int | None = None,
                 *, scale: tuple[float, float] = (0.25, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)
                 ) -> torch.Tensor:
    """A random crop of each image, resized back to the image's size (bilinear) and flipped with probability 1/2:
    CMI's local view (kornia's RandomResizedCrop and RandomHorizontalFlip). Each crop covers a uniform fraction in
    `scale` of the image at an aspect ratio log-uniform in `ratio` (clipped to the image), at a uniform position.
    Differentiable in the images; draws as `augment`'s (a rank's `share` of a global batch of `total`)."""
    b, _, h, w = images.shape
    share = share if share is not None else slice(0, b)
    total = total if total is not None else b
    u = torch.rand(5, total, generator=draws, dtype=torch.float64)[:, share]
    area = scale[0] + (scale[1] - scale[0]) * u[0]
    aspect = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1])
    width, height = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
    centre_x, centre_y = (2 * u[2] - 1) * (1 - width), (2 * u[3] - 1) * (1 - height)
    sign = torch.where(u[4] < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, dtype=torch.float64)
    theta[:, 0, 0], theta[:, 0, 2] = width * sign, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = torch.nn.functional.affine_grid(theta, [b, images.shape[1], h, w], align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class ImagePool:
    """Up to `capacity` images of `image_shape`, as uint8 on `device`; batches of `batch_size` drawn without
    replacement from a shuffled order of the pool, a new order at each round (as a new data loader over the grown
    pool each round draws them) and whenever fewer than a batch remain in the current one."""

    def __init__(self, capacity: int, image_shape: tuple[int, int, int], batch_size: int, device: torch.device,
                 seed: int):
        if capacity < batch_size:
            raise ValueError(f"a pool of {capacity} images cannot give batches of {batch_size}: give a pool_size of "
                             f"at least the batch size")
        self.capacity, self.image_shape, self.batch_size = capacity, tuple(image_shape), batch_size
        self.device = torch.device(device)
        self.images = torch.zeros(capacity, *image_shape, dtype=torch.uint8, device=self.device)
        self.count = 0      # images held
        self.next = 0       # where the next batch is written (the oldest images once full)
        self.draws = torch.Generator().manual_seed(seed)
        self.dtype = torch.get_default_dtype()  # what batches come out as: float64 runs stay float64
        self._order: torch.Tensor | None = None
        self._cursor = 0

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    def add(self, images: torch.Tensor) -> None:
        """Appends a batch of images in [0, 1] (replacing the oldest once the pool is full) and starts a new order."""
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"the pool holds images of shape {self.image_shape}, got {tuple(images.shape[1:])}")
        pixels = pixels_to_bytes(images).to(self.device)
        n = min(pixels.shape[0], self.capacity)
        positions = (self.next + torch.arange(n)) % self.capacity
        self.images[positions.to(self.device)] = pixels[-n:]
        self.next = (self.next + n) % self.capacity
        self.count = min(self.count + n, self.capacity)
        self._order = None

    def sample(self) -> torch.Tensor:
        """The next batch of pool images, as floats in [0, 1]."""
        if self.count < self.batch_size:
            raise RuntimeError(f"the pool holds {self.count} images, fewer than a batch of {self.batch_size}")
        if self._order is None or self._cursor + self.batch_size > self._order.numel():
            self._order, self._cursor = torch.randperm(self.count, generator=self.draws), 0
        picked = self._order[self._cursor:self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return self.images[picked.to(self.device)].to(self.dtype) / 255

    def newest(self, n: int) -> torch.Tensor:
        """The `n` images added last (fewer when the pool holds fewer), as floats in [0, 1]: what image grids show."""
        n = min(n, self.count)
        positions = (self.next - n + torch.arange(n)) % self.capacity
        return self.images[positions.to(self.device)].to(self.dtype) / 255

    def spread(self, n: int) -> torch.Tensor:
        """`n` images spread evenly over the pool in the order they were added, oldest first (the pool's grid)."""
        n = min(n, self.count)
        oldest = (self.next - self.count) % self.capacity
        steps = torch.linspace(0, self.count - 1, n).round().long() if n > 1 else torch.zeros(1, dtype=torch.long)
        return self.images[((oldest + steps) % self.capacity).to(self.device)].to(self.dtype) / 255

    def state_dict(self) -> dict:
        """Held images only (a partly filled pool writes no empty slots), the write position and the generator's
        state; a round's order is drawn anew at its start and is not kept (checkpoints fall between rounds)."""
        return {"images": self.images[:self.count].cpu().clone() if self.count < self.capacity else
                self.images.cpu().clone(), "count": self.count, "next": self.next,
                "capacity": self.capacity, "generator": self.draws.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity or tuple(state["images"].shape[1:]) != self.image_shape:
            raise ValueError(f"the checkpoint's pool holds {state['capacity']} images of "
                             f"{tuple(state['images'].shape[1:])}, this run's {self.capacity} of {self.image_shape}")
        self.count, self.next = int(state["count"]), int(state["next"])
        self.images.zero_()
        self.images[:state["images"].shape[0]] = state["images"].to(self.device)
        self.draws.set_state(state["generator"])
        self._order = None


def pool_memory(capacity: int, image_shape) -> str:
    """The pool's memory, for the run's header."""
    size = capacity * math.prod(image_shape)
    return f"{size / 2 ** 20:.1f} MiB" if size >= 2 ** 20 else f"{size / 2 ** 10:.1f} KiB"
