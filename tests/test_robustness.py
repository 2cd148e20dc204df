"""Robustness: gradients, memory and the defined results.

Each test names the defect it guards against (docs/numerics.md, "Gradients" and "Memory").
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import rawks_triton as rt
from rawks_triton import memory


def batch(dtype=torch.float64):
    """Two 10 x 12 images with scribbles of two labels."""
    rng = np.random.default_rng(5)
    scores = torch.from_numpy(rng.random((2, 10, 12)) * 0.5).to(dtype)
    seeds = torch.full((2, 10, 12), -1)
    seeds[:, 1, 1:4], seeds[:, 8, 7:11] = 0, 1
    return scores, seeds


@pytest.mark.parametrize("backend", ["scipy", "torch"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_nan_incoming_gradient_propagates_to_its_image_only(backend, bad):
    """Was: the torch backend gave that image a gradient of exactly 0, and scipy raised an
    error that blamed "degenerate weights"."""
    scores, seeds = batch()
    g = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 2, 10, 12)))
    leaf = scores.clone().requires_grad_(True)
    rt.propagate(leaf, seeds, 2, backend=backend).P.backward(g)
    clean = leaf.grad.clone()
    g_bad = g.clone()
    g_bad[1, 0, 5, 5] = bad  # a reachable pixel without a seed
    leaf.grad = None
    rt.propagate(leaf, seeds, 2, backend=backend).P.backward(g_bad)
    assert torch.isnan(leaf.grad[1]).all(), "the image with a NaN / Inf incoming gradient gets NaN"
    torch.testing.assert_close(leaf.grad[0], clean[0], rtol=0, atol=0)  # the other image is untouched


def test_a_nan_incoming_gradient_at_a_seed_meets_a_zero_derivative():
    scores, seeds = batch()
    leaf = scores.clone().requires_grad_(True)
    g = torch.zeros(2, 2, 10, 12, dtype=torch.float64)
    g[0, 0, 1, 2] = float("nan")  # a seed: P is constant there
    rt.propagate(leaf, seeds, 2, backend="torch").P.backward(g)
    assert torch.isfinite(leaf.grad).all() and float(leaf.grad.abs().max()) == 0.0


@pytest.mark.parametrize("backend", ["scipy", "torch"])
def test_double_backward_raises_instead_of_a_wrong_second_derivative(backend):
    """Was: second derivatives without the solve's terms (-0.170 against -0.288)."""
    scores, seeds = batch()
    leaf = scores.clone().requires_grad_(True)
    P = rt.propagate(leaf, seeds, 2, backend=backend).P
    v = torch.ones_like(P)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(P, leaf, v, create_graph=True)
    # first derivatives as usual
    (grad,) = torch.autograd.grad(rt.propagate(leaf, seeds, 2, backend=backend).P, leaf, v)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("transform", ["vmap", "grad", "jacrev"])
def test_torch_func_transforms_get_our_error(transform):
    """Was: torch's generic message about setup_context."""
    scores, seeds = batch()

    def loss(s):
        return rt.propagate(s, seeds[:1], 2, backend="torch").P.sum()

    call = {
        "vmap": lambda: torch.func.vmap(lambda s: rt.propagate(s[None], seeds[:1], 2).P)(scores),
        "grad": lambda: torch.func.grad(loss)(scores[:1]),
        "jacrev": lambda: torch.func.jacrev(loss)(scores[:1]),
    }[transform]
    with pytest.raises(RuntimeError, match="does not support torch.func transforms"):
        call()


@pytest.mark.parametrize("backend", ["scipy", "torch", "auto"])
def test_a_batch_without_seeds_is_differentiable_with_a_zero_gradient(backend):
    """Was: P without a grad_fn, so backward() raised."""
    scores, _ = batch()
    leaf = scores.clone().requires_grad_(True)
    seeds = torch.full((2, 10, 12), -1)
    result = rt.propagate(leaf, seeds, 3, backend=backend)
    assert result.P.grad_fn is not None
    torch.testing.assert_close(result.P, torch.full_like(result.P, 1 / 3))
    (result.P * torch.randn_like(result.P)).sum().backward()
    assert torch.equal(leaf.grad, torch.zeros_like(leaf.grad))


# ---- memory ---------------------------------------------------------------------------------


def test_a_request_far_beyond_memory_is_refused_before_allocating():
    """Was: 8 images x 21 labels x 4096^2 in float64 reached the OOM killer."""
    scores = torch.zeros(8, 1, 1, dtype=torch.float64).expand(8, 4096, 4096)  # a view: no memory
    seeds = torch.zeros(8, 1, 1, dtype=torch.int64).expand(8, 4096, 4096).clone()
    seeds[:, 0, :21] = torch.arange(21)
    with pytest.raises(rt.PropagationMemoryError, match=r"GiB.*fewer labels") as info:
        rt.propagate(scores, seeds, 21, backend="torch")
    assert isinstance(info.value, MemoryError)


def test_the_estimate_is_compared_with_what_is_available(monkeypatch):
    scores, seeds = batch(torch.float32)
    need = memory.estimate_bytes("torch", 4, 2, 10 * 12, torch.float32, backward=False)
    assert need == (12 * 4 + 12 * 2) * 10 * 12 * 4
    monkeypatch.setattr(memory, "available_bytes", lambda device: (need - 1, "a test's limit"))
    with pytest.raises(rt.PropagationMemoryError, match="a test's limit"):
        rt.propagate(scores, seeds, 2, backend="torch")
    monkeypatch.setattr(memory, "available_bytes", lambda device: (need, "a test's limit"))
    assert rt.propagate(scores, seeds, 2, backend="torch").converged.all()


def test_an_allocator_failure_during_the_solve_becomes_the_same_error(monkeypatch):
    """Was: the allocator's raw "DefaultCPUAllocator: can't allocate memory" deep inside the CG iteration."""
    from rawks_triton.backends import torch as torch_backend

    def fail(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(torch_backend.TorchBackend, "solve", fail)
    scores, seeds = batch()
    with pytest.raises(rt.PropagationMemoryError, match="out of memory during the solve"):
        rt.propagate(scores, seeds, 2, backend="torch")
    # other errors are not renamed
    monkeypatch.setattr(
        torch_backend.TorchBackend, "solve", lambda self, *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
    )
    with pytest.raises(RuntimeError, match="boom"):
        rt.propagate(scores, seeds, 2, backend="torch")


def test_an_address_space_limit_is_seen_in_a_subprocess():
    """ulimit -v: the estimate is compared with the limit less the process's size."""
    code = textwrap.dedent(
        """
        import resource, torch, rawks_triton as rt
        from rawks_triton import memory
        have, source = memory.available_bytes(torch.device("cpu"))
        soft = 64 * 2**30
        resource.setrlimit(resource.RLIMIT_AS, (soft, resource.getrlimit(resource.RLIMIT_AS)[1]))
        limited, source = memory.available_bytes(torch.device("cpu"))
        assert "ulimit" in source or limited < soft, (limited, source)
        scores = torch.zeros(1, 1, 1).expand(4, 8192, 8192)
        seeds = torch.full((4, 8192, 8192), -1)
        seeds[:, 0, :8] = torch.arange(8)
        try:
            rt.propagate(scores, seeds, 8, backend="torch")
        except rt.PropagationMemoryError as err:
            print("refused:", err)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "GiB" in done.stdout


# ---- Grady: the partition of unity -----------------------------------------------------------


def test_a_grady_solution_that_does_not_sum_to_one_warns_from_the_callers_line():
    """A float32 chain with a wall of node score 40: the weak edges' share is lost to rounding
    and the pocket behind the wall came out unreachable (S = 0) where S = 1, without a warning."""
    scores = torch.tensor([[[0.0, 0.0, 40.0, 0.0, 0.0]]])
    seeds = torch.tensor([[[0, -1, -1, -1, -1]]])
    with pytest.warns(rt.ConvergenceWarning, match="do not sum to 1.*float32") as record:
        result = rt.propagate(scores, seeds, 1, "grady", backend="scipy")
    assert record[0].filename == __file__
    assert not bool(result.converged.any())
    with pytest.raises(rt.ConvergenceError, match="do not sum to 1"):
        rt.propagate(scores, seeds, 1, "grady", backend="scipy", strict=True)
    exact = rt.propagate(scores.double(), seeds, 1, "grady", backend="scipy")  # float64 resolves it
    assert bool(exact.converged.all()) and bool(exact.reachable.all())


def test_a_singular_direct_factorisation_warns_instead_of_raising():
    """Found by the fuzz battery's explore profile: float32 Grady edges where a weak edge's
    share of the degree is lost to rounding leave a region with no excess, and the direct
    solve raised "Factor is exactly singular". Now it is factorised with a shift of the
    dtype's rounding and the partition-of-unity check reports it."""
    edges = torch.zeros(1, 2, 1, 5)
    edges[0, 0, 0, :4] = torch.tensor([1.0, 1.0, 1e-9, 1.0])
    seeds = torch.full((1, 1, 5), -1)
    seeds[0, 0, 0] = 0
    with pytest.warns(rt.ConvergenceWarning, match="do not sum to 1"):
        result = rt.propagate(edges, seeds, 2, "grady", backend="scipy")
    assert not bool(result.converged.any()) and torch.isfinite(result.P).all()
    exact = rt.propagate(edges.double(), seeds, 2, "grady", backend="scipy")
    assert bool(exact.converged.all())
    torch.testing.assert_close(exact.P[0, 0], torch.ones(1, 5, dtype=torch.float64))
