"""Every bad input gets a clear error naming the argument; edge cases get defined results."""

import pytest
import torch

import rawks_triton as rt


def seeds(n=1, h=4, w=5):
    s = torch.full((n, h, w), -1)
    s[:, 0, 0] = 0
    s[:, -1, -1] = 1
    return s


def B(n=1, h=4, w=5, dtype=torch.float32):
    return torch.rand(n, h, w, dtype=dtype)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(boundary=[[0.0]]), TypeError, r"`boundary` must be a torch.Tensor, got list"),
        (
            dict(boundary=torch.zeros(1, 4, 5, dtype=torch.float16)),
            TypeError,
            r"`boundary` must have dtype float32 or float64, got torch.float16",
        ),
        (dict(boundary=torch.zeros(1, 4, 5, dtype=torch.int64)), TypeError, r"`boundary` must have dtype"),
        (
            dict(boundary=torch.zeros(4, 5)),
            ValueError,
            r"`boundary` must have shape \(N, H, W\) or \(N, 1, H, W\) for model='rawks', got \(4, 5\)",
        ),
        (dict(boundary=torch.zeros(1, 3, 4, 5)), ValueError, r"`boundary` must have shape .* got \(1, 3, 4, 5\)"),
        (dict(boundary=torch.zeros(1, 2, 4, 5)), ValueError, r"model='rawks', got \(1, 2, 4, 5\)"),
        (dict(boundary=torch.zeros(1, 0, 5)), ValueError, r"H >= 1 and W >= 1"),
        (
            dict(boundary=torch.tensor([[[0.0, float("nan"), 0, 0, 0]] * 4])),
            ValueError,
            r"`boundary` must be finite, found 4 NaN or Inf",
        ),
        (dict(boundary=torch.tensor([[[0.0, float("inf"), 0, 0, 0]] * 4])), ValueError, r"must be finite"),
        (dict(boundary=-torch.ones(1, 4, 5)), ValueError, r"`boundary` must be >= 0 for model='rawks'.*got minimum -1"),
        (dict(seeds=seeds().float()), TypeError, r"`seeds` must have an integer dtype .* got torch.float32"),
        (dict(seeds=seeds() >= 0), TypeError, r"`seeds` must have an integer dtype .* got torch.bool"),
        (
            dict(seeds=seeds(h=3)),
            ValueError,
            r"`seeds` must have shape \(N, H, W\) = \(1, 4, 5\) to match `boundary`, got \(1, 3, 5\)",
        ),
        (dict(seeds=seeds(n=2)), ValueError, r"got \(2, 4, 5\)"),
        (
            dict(seeds=seeds().fill_(3)),
            ValueError,
            r"labels in \[0, 3\) or ignore_index=-1, got 20 pixel\(s\) with other values, e.g. \[3\]",
        ),
        (dict(seeds=seeds().fill_(-2)), ValueError, r"e.g. \[-2\]"),
        (dict(num_labels=0), ValueError, r"`num_labels` must be >= 1, got 0"),
        (dict(num_labels=2.0), TypeError, r"`num_labels` must be an int, got float"),
        (dict(model="potts"), ValueError, r"`model` must be one of \['grady', 'rawks'\], got 'potts'"),
        (dict(backend="cuda"), ValueError, r"`backend` must be one of"),
        (dict(rtol=-1.0), ValueError, r"`rtol` must be a finite number >= 0, got -1.0"),
        (dict(rtol=float("nan")), ValueError, r"`rtol` must be a finite number"),
        (dict(atol="0"), TypeError, r"`atol` must be a real number, got str"),
        (dict(maxiter=0), ValueError, r"`maxiter` must be >= 1, got 0"),
        (dict(ignore_index=1), ValueError, r"`ignore_index` must lie outside \[0, 3\)"),
        (dict(check_every=0), ValueError, r"`check_every` must be >= 1"),
        (dict(strict=1), TypeError, r"`strict` must be a bool"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_input_raises_clear_error(kwargs, error, match):
    args = dict(boundary=B(), seeds=seeds(), num_labels=3, model="rawks")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        rt.propagate(args.pop("boundary"), args.pop("seeds"), **args)


def test_grady_negative_edge_weights():
    edges = torch.ones(1, 2, 4, 5)
    edges[0, 1, 2, 2] = -0.5
    with pytest.raises(ValueError, match=r"`boundary` edge weights must be >= 0, got minimum -0.5"):
        rt.propagate(edges, seeds(), 3, "grady")


def test_device_mismatch_and_unavailable_triton(monkeypatch):
    meta = torch.full((1, 4, 5), -1, device="meta")
    with pytest.raises(ValueError, match=r"`seeds` must be on the device of `boundary` \(cpu\), got meta"):
        rt.propagate(B(), meta, 3)
    # Import the kernels first: creating them while the switch is 0 would compile them for a
    # GPU in every later test of the session.
    pytest.importorskip("rawks_triton.backends.triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors without the interpreter
    with pytest.raises(ValueError, match=r"`backend`='triton' needs CUDA tensors"):
        rt.propagate(B(), seeds(), 3, backend="triton")


def test_module_checks_options_at_construction():
    with pytest.raises(ValueError, match="`model`"):
        rt.RandomWalkPropagation(3, model="x")
    with pytest.raises(TypeError, match="`num_labels`"):
        rt.RandomWalkPropagation("3")


# ---- defined results --------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["scipy", "torch"])
@pytest.mark.parametrize("model", ["rawks", "grady"])
def test_all_pixels_seeded(backend, model):
    s = torch.randint(0, 3, (2, 3, 4))
    r = rt.propagate(B(2, 3, 4), s, 3, model, backend=backend)
    assert torch.equal(r.P, torch.nn.functional.one_hot(s, 3).permute(0, 3, 1, 2).float())
    assert bool(r.converged.all()) and int(r.iterations.max()) == 0


@pytest.mark.parametrize("backend", ["scipy", "torch"])
@pytest.mark.parametrize("model", ["rawks", "grady"])
@pytest.mark.parametrize("h,w", [(1, 1), (1, 9), (9, 1)], ids=["1x1", "1x9", "9x1"])
def test_tiny_images(backend, model, h, w):
    s = torch.full((2, h, w), -1)
    s[0, 0, 0] = 1  # image 1 has no seeds
    r = rt.propagate(B(2, h, w, torch.float64), s, 2, model, backend=backend, rtol=1e-12)
    assert r.P.shape == (2, 2, h, w) and torch.isfinite(r.P).all()
    # a single label present: P = 1 for it wherever reachable
    assert torch.all(r.P[0, 1][r.reachable[0]] == 1)
    assert torch.all(r.P[1] == 0.5) and not bool(r.has_seeds[1])


def test_no_seeds_anywhere_and_empty_batch():
    r = rt.propagate(B(2), torch.full((2, 4, 5), -1), 4)
    assert torch.all(r.P == 0.25) and r.num_systems == 0 and not bool(r.reachable.any())
    r = rt.propagate(torch.zeros(0, 4, 5), torch.zeros(0, 4, 5, dtype=torch.long), 2)
    assert r.P.shape == (0, 2, 4, 5)


def test_non_contiguous_inputs_give_the_same_result():
    scores = torch.rand(2, 7, 9, dtype=torch.float64)
    s = torch.full((2, 7, 9), -1)
    s[0, 1, 1], s[1, 5, 7], s[0, 6, 8] = 0, 1, 1
    ref = rt.propagate(scores, s, 2, backend="torch", rtol=1e-12).P
    scores_t = scores.transpose(1, 2).contiguous().transpose(1, 2)
    s_t = s.transpose(1, 2).contiguous().transpose(1, 2)
    assert not scores_t.is_contiguous() and not s_t.is_contiguous()
    out = rt.propagate(scores_t, s_t, 2, backend="torch", rtol=1e-12).P
    assert torch.allclose(out, ref, atol=1e-12)
    out4 = rt.propagate(scores.unsqueeze(1), s.int(), 2, backend="torch", rtol=1e-12).P
    assert torch.allclose(out4, ref, atol=1e-12)


def test_rawks_huge_scores_are_walls_not_nans():
    scores = torch.zeros(1, 6, 6)
    scores[0, :, 3] = 1e6  # a wall
    s = torch.full((1, 6, 6), -1)
    s[0, 0, 0], s[0, 0, 5] = 0, 1
    r = rt.propagate(scores.requires_grad_(), s, 2, backend="torch")
    assert torch.isfinite(r.P).all()
    P = r.P.detach()
    assert float(P[0, 0, :, :3].min()) > 0.999 and float(P[0, 1, :, 4:].min()) > 0.999
    r.P[:, 0].sum().backward()
    assert torch.isfinite(scores.grad).all()
