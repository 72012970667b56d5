"""One forward+backward of every CUDA kernel, odd shapes and both layouts, for compute-sanitizer's memcheck
(run by gpu_check.sh)."""
import torch

import zskt_fast


def leaf(*shape):
    return torch.randn(*shape, device="cuda", requires_grad=True)


for dtype in (torch.float32, torch.bfloat16):
    s_l, t_l = leaf(7, 10).to(dtype), leaf(7, 10).to(dtype)
    s_f = [leaf(7, 3, 5, 7).to(dtype), leaf(7, 16, 17, 3).to(dtype).contiguous(memory_format=torch.channels_last)]
    t_f = [leaf(7, 6, 5, 7).to(dtype), leaf(7, 4, 17, 3).to(dtype)]
    loss = zskt_fast.zskt_student_loss(s_l, t_l, s_f, t_f, backend="cuda")
    torch.autograd.grad(loss, [s_l, t_l, *s_f, *t_f])
# The KL op on short and vocabulary-sized rows, the backward with one or both gradients.
for classes in (10, 5000, 40000):
    s, t = leaf(3, classes), leaf(3, classes)
    torch.autograd.grad(zskt_fast.kl_divergence(s, t, backend="cuda"), [s, t])
    torch.autograd.grad(zskt_fast.kl_divergence(s, t.detach(), backend="cuda"), [s])
torch.cuda.synchronize()
print("memcheck run finished")
