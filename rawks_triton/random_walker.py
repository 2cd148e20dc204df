"""``random_walker``: scikit-image's seeded segmentation, solved by this library.

Same signature, label conventions, edge weights and warnings as
``skimage.segmentation.random_walker``; the linear systems (one per seed label, Grady's
model) are solved by :func:`rawks_triton.propagate` on any backend. Numpy arrays and
torch tensors are accepted; tensors stay on their device.

Images (M, N) and volumes (P, M, N), grey or multichannel. Edge weights, as scikit-image
computes them: for neighbouring pixels (voxels) i, j along axis a,

    w_ij = exp(-beta / (10 std(data)) * sum_c ((x_ic - x_jc) / spacing_a)^2) + 1e-10,

with the exponent divided by sqrt(C) for multichannel data (``channel_axis`` given), and
``std`` taken over every pixel and channel of the data after conversion to floating point
(integers scaled to [0, 1] or [-1, 1] as ``skimage.img_as_float`` does).
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from numbers import Integral, Real

import numpy as np
import torch

from . import _checks
from .propagation import PropagationResult, propagate
from .random_walker_weights import EDGE_EPSILON, _seeded_components, image_edge_weights  # noqa: F401
from .solve import choose
from .solve.options import ConvergenceWarning

MODES = ("auto", "cg", "cg_j", "cg_mg", "bf")

_TORCH_FLOAT = {
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.float32: torch.float32,
    torch.float64: torch.float64,
}
_NUMPY_FLOAT = {np.dtype(np.float16): np.float32, np.dtype(np.float32): np.float32, np.dtype(np.float64): np.float64}


def _data_as_float(data, device) -> torch.Tensor:
    """The data in floating point with ``skimage.img_as_float``'s scaling, as a tensor.

    bool -> {0, 1}; unsigned integers -> x / max; signed integers -> max(x / max, -1);
    float16 -> float32; float32 and float64 unchanged. Integers give float64.
    """
    if isinstance(data, torch.Tensor):
        dtype = data.dtype
        if dtype in _TORCH_FLOAT:
            return data.to(_TORCH_FLOAT[dtype])
        if dtype == torch.bool:
            return data.to(torch.float64)
        if dtype.is_complex:
            raise TypeError(f"`data` must be real-valued (bool, integer or float), got {dtype}")
        info = torch.iinfo(dtype)
        scaled = data.to(torch.float64) / info.max
        return scaled.clamp(min=-1.0) if info.min < 0 else scaled
    array = np.asarray(data)
    kind = array.dtype.kind
    if kind == "f" and array.dtype in _NUMPY_FLOAT:
        array = array.astype(_NUMPY_FLOAT[array.dtype], copy=False)
    elif kind == "b":
        array = array.astype(np.float64)
    elif kind in "ui":
        info = np.iinfo(array.dtype)
        array = array.astype(np.float64) / info.max
        if info.min < 0:
            array = np.maximum(array, -1.0)
    else:
        raise TypeError(f"`data` must be real-valued (bool, integer or float), got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def _labels_as_tensor(labels, device) -> torch.Tensor:
    if isinstance(labels, torch.Tensor):
        tensor = labels
    else:
        array = np.asarray(labels)
        if array.dtype.kind not in "uib":
            raise TypeError(f"`labels` must have an integer dtype, got {array.dtype}")
        tensor = torch.from_numpy(array.astype(np.int64))
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex:
        raise TypeError(f"`labels` must have an integer dtype, got {tensor.dtype}")
    return tensor.to(device=device, dtype=torch.int64)


def _check_arguments(beta, mode, tol, copy, return_full_prob, prob_tol, channel_axis):
    if isinstance(beta, bool) or not isinstance(beta, Real) or not math.isfinite(float(beta)) or float(beta) < 0:
        raise ValueError(f"`beta` must be a finite real number >= 0, got {beta!r}")
    if mode is None:
        mode = "cg_j"  # scikit-image's meaning of None
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"`mode` must be one of {list(MODES)} or None, got {mode!r}")
    tol = _checks.check_nonnegative_real("tol", tol)
    prob_tol = _checks.check_nonnegative_real("prob_tol", prob_tol)
    for name, value in (("copy", copy), ("return_full_prob", return_full_prob)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"`{name}` must be a bool, got {type(value).__name__} ({value!r})")
    if channel_axis is not None and (isinstance(channel_axis, bool) or not isinstance(channel_axis, Integral)):
        raise TypeError(f"`channel_axis` must be an int or None, got {type(channel_axis).__name__} ({channel_axis!r})")
    return mode, tol, prob_tol


def _check_writable_labels(labels, copy, return_full_prob) -> None:
    """copy=False writes the label map into ``labels``: a read-only numpy array cannot take it."""
    if copy or return_full_prob or not isinstance(labels, np.ndarray) or labels.flags.writeable:
        return
    raise ValueError(
        "`labels` must be a writable array when copy=False (the segmentation is written into it), "
        f"got a read-only numpy array of shape {labels.shape} and dtype {labels.dtype} "
        "(labels.flags.writeable is False); pass copy=True to get a new array, or a writable copy of `labels`"
    )


def _spatial_layout(data: torch.Tensor, label_shape, channel_axis) -> torch.Tensor:
    """The data as [*grid, C] (channels last) for labels of shape ``grid`` (2 or 3 axes)."""
    ndim = len(label_shape)
    grid = "(M, N)" if ndim == 2 else "(P, M, N)"
    if channel_axis is None:
        if data.dim() != ndim:
            raise ValueError(
                f"`data` must have the shape of `labels` {tuple(label_shape)} when channel_axis is None "
                f"(grey-level {grid}), got shape {tuple(data.shape)}; pass `channel_axis` for multichannel data"
            )
        data = data.unsqueeze(-1)
    else:
        dims = data.dim()
        if not -dims <= int(channel_axis) < dims:
            raise ValueError(
                f"`channel_axis` must lie in [{-dims}, {dims}) for `data` of shape {tuple(data.shape)}, "
                f"got {channel_axis}"
            )
        data = torch.movedim(data, int(channel_axis), -1)
        if data.dim() != ndim + 1:
            raise ValueError(
                f"`data` must have {ndim + 1} dimensions with channel_axis (a multichannel {grid} "
                f"for `labels` of shape {tuple(label_shape)}), got shape {tuple(data.shape)}"
            )
    if tuple(data.shape[:-1]) != tuple(label_shape):
        raise ValueError(
            f"`labels` must have the spatial shape of `data` {tuple(data.shape[:-1])} "
            f"(channels excluded), got {tuple(label_shape)}"
        )
    return data


def _check_spacing(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    try:
        spacing = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise TypeError(f"`spacing` must be an iterable of {ndim} positive numbers, got {spacing!r}") from None
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"`spacing` must hold one positive number per spatial dimension ({ndim}), got {spacing}")
    return spacing


def _mode_solver(mode: str, device: torch.device, grid, num_labels: int, backend: str, maxiter) -> dict:
    """propagate's keyword arguments for ``mode``; "auto" is resolved by the library's rule."""
    if mode == "auto":
        mode = choose.random_walker_mode(device, grid, num_labels, backend)
    if mode == "bf":
        return dict(backend="scipy")
    preconditioner = "multigrid" if mode == "cg_mg" else "jacobi"
    return dict(backend=backend, preconditioner=preconditioner, maxiter=maxiter)


def random_walker(
    data: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    beta: float = 130,
    mode: str | None = "auto",
    tol: float = 1.0e-3,
    copy: bool = True,
    return_full_prob: bool = False,
    spacing: Sequence[float] | None = None,
    *,
    prob_tol: float = 1e-3,
    channel_axis: int | None = None,
    backend: str = "auto",
    maxiter: int | None = None,
) -> np.ndarray | torch.Tensor:
    """Random-walker segmentation from markers, compatible with scikit-image's.

    Args:
        data: (M, N) image or (P, M, N) volume, or either with a channel axis when
            ``channel_axis`` is given; numpy array or torch tensor. Integer data is
            scaled as ``skimage.img_as_float`` does. The CG modes solve in float32 for
            float16/float32 data and in float64 otherwise; the direct solve in float64.
        labels: (M, N) or (P, M, N) integer markers: > 0 seeds of each phase, 0 unknown,
            < 0 inactive (removed from the graph). Labels are renumbered to consecutive
            integers (the output uses the new numbers), as in scikit-image.
        beta: diffusion penalty (larger: harder to cross intensity edges).
        mode: "auto" (default; scikit-image's default is "cg_j"): the fastest method that
            meets ``tol`` for the size and device (:func:`rawks_triton.solve.choose.random_walker_mode`:
            on the CPU "bf" for small images and volumes, CG above; on CUDA CG).
            "cg_j" (and None): Jacobi-preconditioned conjugate gradients on ``backend``
            ("cg", scikit-image's unpreconditioned CG, runs as "cg_j"); "cg_mg": CG with
            this library's multigrid preconditioner, on images and volumes (as "cg_j", with
            a warning, where the backend has none); "bf": exact sparse
            factorisation (scipy, float64, on the host; ``backend`` is ignored).
        tol: what each label's solve must reach: its certified error in the probabilities
            is at most ``tol`` (the direct solve is exact).
        copy: if False and the result is a label map, it is written into ``labels`` (which
            must then be a writable array or tensor) and ``labels`` is returned.
        return_full_prob: return the probabilities (nlabels, *labels.shape) instead of the labels.
        spacing: one voxel spacing per spatial axis of ``labels`` (default all 1); the
            intensity difference along an axis is divided by its spacing, as in scikit-image.
        prob_tol: warn when a probability leaves [-prob_tol, 1 + prob_tol].
        channel_axis: the channel axis of multichannel data, or None for grey-level data.
        backend: this library's backend for the CG modes: "auto" (triton for CUDA tensors,
            torch otherwise; the CG mode asked for is kept), "torch", "triton" or "scipy"
            (a direct solve, as "bf").
        maxiter: CG iteration limit (default: the library's).

    Returns:
        With ``return_full_prob`` False, the labels (renumbered 1..nlabels, inactive voxels
        negative, unknown voxels that no seed can reach 0) with the type of ``labels``
        (numpy array of its dtype, or tensor on ``labels``' device). Otherwise float
        probabilities (nlabels, *labels.shape): a float64 numpy array for numpy labels,
        else a tensor of the data's floating dtype on ``data``'s device; inactive and
        unreachable voxels are 0 for every label.

    Differences from scikit-image: the default mode is "auto", not "cg_j"; a constant
    image gives uniform weights instead of NaN; seeds cut off by inactive voxels keep their
    label (scikit-image can return NaN there); the early-return probabilities (no unknown
    voxel) have the documented (nlabels, ...) layout.
    """
    output, _ = _solve(
        data, labels, beta, mode, tol, copy, return_full_prob, spacing, prob_tol, channel_axis, backend, maxiter
    )
    return output


def random_walker_with_stats(
    data, labels, *args, **kwargs
) -> tuple[np.ndarray | torch.Tensor, PropagationResult | None]:
    """:func:`random_walker` (the same arguments), also returning the solver's :class:`PropagationResult`.

    Returns ``(output, result)``; ``result`` is None when nothing was solved (no unknown
    pixel, or none that a seed can reach). ``result.iterations`` / ``result.residual``
    hold the per-label CG statistics.
    """
    bound = inspect.signature(random_walker).bind(data, labels, *args, **kwargs)
    bound.apply_defaults()
    return _solve(**bound.arguments)


def _solve(data, labels, beta, mode, tol, copy, return_full_prob, spacing, prob_tol, channel_axis, backend, maxiter):
    """The work of :func:`random_walker`; warnings point at the public function's caller."""
    mode, tol, prob_tol = _check_arguments(beta, mode, tol, copy, return_full_prob, prob_tol, channel_axis)
    _check_writable_labels(labels, copy, return_full_prob)
    labels_is_tensor = isinstance(labels, torch.Tensor)
    if isinstance(data, torch.Tensor):
        device = data.device
    else:
        device = labels.device if labels_is_tensor else torch.device("cpu")
    image = _data_as_float(data, device)
    label_map = _labels_as_tensor(labels, device)
    if label_map.dim() not in (2, 3):
        raise ValueError(f"`labels` must be a 2D (M, N) or 3D (P, M, N) label map, got shape {tuple(label_map.shape)}")
    ndim = label_map.dim()
    image = _spatial_layout(image, label_map.shape, channel_axis)
    spacing = _check_spacing(spacing, ndim)
    _checks.check_finite("data", image)
    multichannel = channel_axis is not None

    # Labels: renumber to consecutive integers around 0, as scikit-image does.
    values = torch.unique(label_map)
    if int(values.max()) <= 0:
        raise ValueError(
            f"`labels` must contain at least one positive value (a seed); got only values <= 0: {values[:5].tolist()}"
        )
    unknown = label_map == 0
    negatives = int((values < 0).sum())
    renumbered = torch.searchsorted(values, label_map) - negatives
    num_labels = int((values > 0).sum())
    active = renumbered >= 0
    # With inactive pixels, only the unknown pixels connected to a seed can be determined.
    reachable = _seeded_components(active, renumbered > 0) & unknown if negatives else unknown
    if not bool(reachable.any()):
        if not bool(unknown.any()):
            reason = "random_walker only segments unlabeled pixels (labels == 0) and `labels` has none"
        else:
            reason = "random_walker: every unlabeled pixel is cut off from the seeds by inactive pixels (labels < 0)"
        warnings.warn(f"{reason}; returning the labels unchanged.", UserWarning, stacklevel=3)
        return _early_return(labels, label_map, values, return_full_prob, image.dtype, copy), None

    solver = _mode_solver(mode, device, tuple(label_map.shape), num_labels, backend, maxiter)
    # The direct solve factorises in float64: its weights (and degrees) are computed in
    # float64 too, so float32 data loses no weak edge to the rounding of a degree.
    direct = solver["backend"] == "scipy"
    edges = image_edge_weights(image.double() if direct else image, beta, spacing, multichannel)
    if negatives:  # an edge with an inactive end is removed from the graph
        for channel, axis in enumerate(reversed(range(ndim))):
            head = [slice(None)] * ndim
            tail = [slice(None)] * ndim
            head[axis], tail[axis] = slice(0, -1), slice(1, None)
            edges[(0, channel, *head)] *= active[tuple(head)] & active[tuple(tail)]
    seeds = torch.where(renumbered > 0, renumbered - 1, torch.full_like(renumbered, -1)).unsqueeze(0)

    with warnings.catch_warnings():
        # Reported below in this function's terms (beta, tol) instead of propagate's.
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = propagate(edges, seeds, num_labels, "grady", rtol=tol, atol=0.0, **solver)
    if not bool(result.converged.all()):
        failed = ~result.converged
        warnings.warn(
            f"random_walker: conjugate gradients did not reach tol={tol:g} for {int(failed.sum())} of "
            f"{failed.numel()} labels (largest estimated error of the probabilities {float(result.error.max()):.3e}, "
            f"relative residual {float(result.residual.max()):.3e}, after {int(result.iterations.max())} "
            f"iterations). Decrease `beta` to improve the conditioning, "
            f"raise `maxiter`, or loosen `tol`.",
            ConvergenceWarning,
            stacklevel=3,
        )

    # Grady's probabilities are the solutions themselves (they sum to 1 where a seed is reachable).
    probabilities = result.Z[0].to(image.dtype)  # [L, *grid]
    solved = probabilities[:, reachable]
    if solved.numel() and (float(solved.min()) < -prob_tol or float(solved.max()) > 1 + prob_tol):
        warnings.warn(
            f"random_walker: probabilities leave [0, 1] by more than prob_tol={prob_tol:g} "
            f"(range [{float(solved.min()):.4g}, {float(solved.max()):.4g}]). Decrease `beta` and/or `tol`.",
            UserWarning,
            stacklevel=3,
        )
    seeded = renumbered > 0
    keep = reachable | seeded
    if return_full_prob:
        probabilities = torch.where(keep, probabilities, torch.zeros_like(probabilities))
        return (probabilities.cpu().double().numpy() if not labels_is_tensor else probabilities), result
    segmentation = torch.where(reachable, probabilities.argmax(dim=0) + 1, renumbered)
    return _as_labels_output(labels, segmentation, copy), result


def _as_labels_output(labels, segmentation: torch.Tensor, copy: bool):
    """``segmentation`` in the type, dtype and device of ``labels`` (written into it when not ``copy``)."""
    if isinstance(labels, torch.Tensor):
        out = segmentation.to(device=labels.device, dtype=labels.dtype)
        if not copy:
            labels.copy_(out)
            return labels
        return out
    if not copy and isinstance(labels, np.ndarray):
        labels[...] = segmentation.cpu().numpy()
        return labels
    return segmentation.cpu().numpy().astype(np.asarray(labels).dtype)


def _early_return(labels, label_map: torch.Tensor, values: torch.Tensor, return_full_prob: bool, dtype, copy: bool):
    """No unknown pixel can be solved: the labels as given, or their one-hot probabilities."""
    if return_full_prob:
        positive = values[values > 0]
        onehot = (label_map.unsqueeze(0) == positive.view((-1,) + (1,) * label_map.dim())).to(dtype)
        return onehot if isinstance(labels, torch.Tensor) else onehot.cpu().double().numpy()
    if not copy and isinstance(labels, (torch.Tensor, np.ndarray)):
        return labels
    if isinstance(labels, torch.Tensor):
        return labels.clone()
    return np.array(labels, copy=True)
