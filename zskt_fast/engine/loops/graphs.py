"""The steps of Algorithm 1 captured once each as a CUDA graph over static buffers and replayed: the generator step,
the images-and-teacher pass, and the student step (compiled or not). Capture needs host-synchronisation-free steps,
hence capturable Adam with a tensor learning rate (the cosine schedule fills it in place) and clipping whose scale
stays on the device.
"""
from __future__ import annotations

import torch
from torch import nn

from ..lifecycle.speed import check_cuda_graphs
from .steps import TeacherOutputs, AlgorithmOneSteps


class GraphedAlgorithmOneSteps(AlgorithmOneSteps):
    """The same steps, each captured once as a CUDA graph and replayed. Call `capture()` after loading any state."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_cuda_graphs(self.settings.amp, self.device, self.settings.compile)
        self.graphs: dict[str, torch.cuda.CUDAGraph] = {}

    def _adam(self, net: nn.Module, lr: float) -> torch.optim.Adam:
        # capturable: the step counter and bias corrections stay on the GPU; a tensor lr is updated in place.
        return torch.optim.Adam(net.parameters(), lr=torch.tensor(lr, device=self.device), capturable=True,
                                foreach=True)

    def _tensors_to_restore(self) -> list[torch.Tensor]:
        nets = [self.student, self.generator] + ([self.momentum_generator.module] if self.momentum_generator else [])
        tensors = [t for net in nets for t in (*net.parameters(), *net.buffers())]
        tensors += self.objective.state_tensors()
        for optimizer in (self.optimizer_G, self.optimizer_S):
            for state in optimizer.state.values():
                tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        return tensors

    def capture(self, warmup_steps: int = 3, generator_passes: int = 1) -> None:
        """Warm up on a side stream (as capture requires), capture the three graphs, then put every parameter, buffer
        and optimiser state back as it was, so that capturing changes nothing in the run. `generator_passes` is
        images_and_teacher's (the loop's n_S), fixed in the captured graph."""
        self.generator_passes = generator_passes
        fresh_optimizers = not any(self.optimizer_G.state) and not any(self.optimizer_S.state)
        saved = [t.detach().clone() for t in self._tensors_to_restore()]
        noise_state = self.noise.get_state()
        self.static_z = super().sample_noise().clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup_steps):
                super().train_generator(self.static_z)
                images, teacher = super().images_and_teacher(self.static_z, generator_passes)
                super().train_student(images, teacher)
        torch.cuda.current_stream().wait_stream(side)

        for optimizer in (self.optimizer_G, self.optimizer_S):
            optimizer.zero_grad(set_to_none=True)
        self.graphs = {name: torch.cuda.CUDAGraph() for name in ("generator", "images", "student")}
        try:
            with torch.cuda.graph(self.graphs["generator"]):
                self.static_loss_G = super().train_generator(self.static_z)
            with torch.cuda.graph(self.graphs["images"]):
                self.static_images, self.static_teacher = super().images_and_teacher(self.static_z, generator_passes)
            with torch.cuda.graph(self.graphs["student"]):
                self.static_loss_S, self.static_logits_S = super().train_student(self.static_images,
                                                                                  self.static_teacher)
        except RuntimeError as error:
            raise ValueError(
                f"the steps cannot be captured as CUDA graphs ({str(error).splitlines()[0]}): a network that waits "
                f"for the GPU inside its forward pass (control flow on tensor values, .item(), .tolist()) cannot be "
                f"replayed; set cuda_graphs off (--no-cuda-graphs)") from error

        current = self._tensors_to_restore()
        with torch.no_grad():
            if fresh_optimizers:  # warm-up created the optimiser state: zero it, as a fresh optimiser has none
                n_model = len(saved)
                for t in current[n_model:]:
                    t.zero_()
                current, restore = current[:n_model], saved
            else:
                restore = saved
            for t, s in zip(current, restore):
                t.copy_(s)
        self.noise.set_state(noise_state)
        torch.cuda.synchronize()

    # Replays read and write the static buffers captured above: the arguments the eager steps take are the same
    # buffers here (the loop passes back what these return), so they are accepted and not read.
    def sample_noise(self) -> torch.Tensor:
        if self.world is None:
            self.static_z.normal_(generator=self.noise)
        else:
            self.static_z.copy_(super().sample_noise())
        return self.static_z

    def generator_step(self, _static_z: torch.Tensor) -> torch.Tensor:
        self.graphs["generator"].replay()
        self.average_generator()  # eager, after the replay, as average_student
        return self.static_loss_G

    def images_and_teacher(self, _static_z: torch.Tensor, generator_passes: int = 1):
        if generator_passes != self.generator_passes:
            raise ValueError(f"the images pass was captured for {self.generator_passes} generator passes (n_S) and is "
                             f"asked for {generator_passes}: capture(generator_passes={generator_passes})")
        self.graphs["images"].replay()
        return self.static_images, self.static_teacher

    def student_step(self, _static_images: torch.Tensor, _static_teacher: TeacherOutputs):
        self.graphs["student"].replay()
        self.average_student()  # eager, after the replay: its warm-up counts the updates on the host
        return self.static_loss_S, self.static_logits_S
