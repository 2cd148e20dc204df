"""Forward and forward+backward CPU time of multigrid CG on the comparison script's Grady problem.

    python -m bench.multigrid_forward_backward

(scikit-image's weights, beta 130, 3 labels, float32, rtol 1e-4, one torch thread, CPU-time
median of 3 after one untimed call; the loss of the backward is sum P * w with random w.)
"""
import time, torch, warnings, statistics
torch.set_num_threads(1)
import rawks_triton as rt
from bench.problems import make_batch
for size in (512, 1024):
    b = make_batch(size, size, 3, 1, dtype=torch.float32)
    edges, seeds = b.grady_edges, b.seeds
    w = torch.randn(1, 3, size, size)
    def fwd():
        return rt.propagate(edges, seeds, 3, model="grady", backend="torch", preconditioner="multigrid", rtol=1e-4)
    def fwdbwd():
        e = edges.clone().requires_grad_(True)
        r = rt.propagate(e, seeds, 3, model="grady", backend="torch", preconditioner="multigrid", rtol=1e-4)
        (r.P * w).sum().backward()
        return r
    for name, fn in (("forward", fwd), ("forward+backward", fwdbwd)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = fn()
        ts = []
        for _ in range(3):
            t = time.process_time(); fn(); ts.append(1e3 * (time.process_time() - t))
        print(f"{size}x{size} {name}: median CPU {statistics.median(ts):.0f} ms ({min(ts):.0f}-{max(ts):.0f}), "
              f"iterations fwd {int(r.iterations.max())}, adjoint {None if r.adjoint_iterations is None else int(r.adjoint_iterations.max())}, "
              f"adjoint converged {None if r.adjoint_converged is None else bool(r.adjoint_converged.all())}, warnings {len(caught)}")
