"""Training on volumes: the acdc-volumes loader, the per-slice and 3D networks, 3D propagation, the loop, eval."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rawks_triton.cli import main
from rawks_triton.loss import rawks_loss
from rawks_triton.training import TrainConfig, load_checkpoint, networks_from_checkpoint, train
from rawks_triton.training.data import ACDCVolumeDataset, DataFolderError
from rawks_triton.training.networks import (
    BoundaryNet,
    PerSlice,
    SegmentationNet,
    build_boundary_net,
    build_segmentation_net,
)
from rawks_triton.training.propagate import PropagationSettings, propagate_scribbles
from rawks_triton.training.splits import build_splits

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
EXACT = PropagationSettings(backend="scipy")


def make_volumes(root: Path, patients=(1, 2, 5), depth=3, height=12, width=10):
    """One tiny volume per patient: a bright box (label 3) through every slice, scribbled in the
    first and last slices only, the background scribbled along the top row of the middle slice."""
    h5py = pytest.importorskip("h5py")
    root.mkdir(parents=True, exist_ok=True)
    for p in patients:
        with h5py.File(root / f"patient{p:03d}_frame01.h5", "w") as f:
            image = np.full((depth, height, width), 0.2, dtype=np.float32)
            image[:, 4:8, 3:7] = 0.9
            f["image"] = image
            label = np.zeros((depth, height, width), dtype=np.uint8)
            label[:, 4:8, 3:7] = 3
            f["label"] = label
            scribble = np.full((depth, height, width), 4, dtype=np.uint16)
            scribble[0, 5, 4:6] = 3
            scribble[-1, 6, 4:6] = 3
            scribble[depth // 2, 0, :] = 0
            f["scribble"] = scribble
    return root


def test_loader_reads_whole_volumes_and_splits_by_patient(tmp_path):
    root = make_volumes(tmp_path / "vol")
    data = ACDCVolumeDataset(root)
    assert data.names == ["patient001_frame01", "patient002_frame01", "patient005_frame01"]
    assert data.volumetric and data.num_labels == 4 and data.in_channels == 1
    s = data[0]
    assert s.image.shape == (1, 3, 12, 10) and s.image.dtype == torch.float32
    assert s.scribbles.shape == s.mask.shape == (3, 12, 10) and s.scribbles.dtype == torch.int64
    assert int(s.scribbles[0, 5, 4]) == 3 and int(s.scribbles[1, 5, 4]) == -1 and int(s.scribbles[1, 0, 0]) == 0
    assert int(s.mask[2, 5, 5]) == 3 and int(s.mask[0, 0, 0]) == 0
    # The held-out patients of the 2D ACDC set (patient005 by default).
    splits = build_splits("acdc-volumes", str(root))
    assert splits.volumetric and splits.val.names == ["patient005_frame01"]
    assert splits.train.names == ["patient001_frame01", "patient002_frame01"]
    splits = build_splits("acdc-volumes", str(root), {"val_patients": "patient001+patient002"})
    assert splits.train.names == ["patient005_frame01"] and len(splits.val) == 2


def test_loader_downsamples_in_plane_and_keeps_thin_strokes(tmp_path):
    root = make_volumes(tmp_path / "vol")
    train = build_splits("acdc-volumes", str(root), {"downsample": "2"}).train
    s = train[0]
    assert s.image.shape == (1, 3, 6, 5) and s.scribbles.shape == s.mask.shape == (3, 6, 5)
    assert train.image_size(0) == (3, 6, 5)  # from the file's header, as the checkpoint records it
    assert int(s.scribbles[0, 2, 2]) == 3 and bool((s.scribbles[1, 0] == 0).all())
    assert int(s.mask[1, 2, 2]) == 3 and int(s.mask[1, 0, 0]) == 0
    full = ACDCVolumeDataset(root)[0]
    assert torch.allclose(s.image[0, 1, 0, 0], full.image[0, 1, :2, :2].mean())


def test_loader_errors_name_the_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    root = tmp_path / "bad"
    root.mkdir()
    with pytest.raises(DataFolderError, match="found none"):
        ACDCVolumeDataset(root)
    with h5py.File(root / "patient001_frame01.h5", "w") as f:
        f["image"] = np.zeros((4, 5), dtype=np.float32)
        f["label"] = np.zeros((4, 5), dtype=np.uint8)
        f["scribble"] = np.zeros((4, 5), dtype=np.uint16)
    with pytest.raises(DataFolderError, match=r"patient001_frame01.h5.*3-d.*use --data acdc"):
        ACDCVolumeDataset(root)[0]
    with pytest.raises(ValueError, match="downsample"):
        ACDCVolumeDataset(root, downsample=0)
    with pytest.raises(ValueError, match="unknown option"):
        build_splits("acdc-volumes", str(root), {"holdout": "x"})


def test_per_slice_wrapper_is_the_2d_network_on_every_slice_with_its_gradients():
    torch.manual_seed(0)
    net = SegmentationNet(1, 4, width=8)
    wrapped = PerSlice(net)
    volume = torch.rand(2, 1, 3, 13, 7, dtype=torch.float64, requires_grad=True)
    net.double()
    out = wrapped(volume)
    assert out.shape == (2, 4, 3, 13, 7)
    # Slice d of volume n is the 2D network on that slice alone (GroupNorm is per sample).
    for n in range(2):
        for d in range(3):
            torch.testing.assert_close(out[n, :, d], net(volume[n : n + 1, :, d])[0])
    weights = torch.rand_like(out)
    (out * weights).sum().backward()
    grad_volume = volume.grad.clone()
    grad_weights = [p.grad.clone() for p in net.parameters()]
    volume.grad = None
    net.zero_grad()
    slices = volume.transpose(1, 2).reshape(6, 1, 13, 7)
    (net(slices) * weights.transpose(1, 2).reshape(6, 4, 13, 7)).sum().backward()
    torch.testing.assert_close(volume.grad, grad_volume)
    for mine, reference in zip(grad_weights, (p.grad for p in net.parameters()), strict=True):
        torch.testing.assert_close(mine, reference)
    # Images pass straight through.
    image = torch.rand(1, 1, 9, 11, dtype=torch.float64)
    torch.testing.assert_close(wrapped(image), net(image))
    with pytest.raises(ValueError, match=r"\(N, C, D, H, W\)"):
        wrapped(torch.rand(9, 11))


@pytest.mark.parametrize("volume_net", ["per-slice", "3d"])
def test_volume_networks_keep_the_shape_and_b_starts_near_zero(volume_net):
    torch.manual_seed(0)
    q = build_segmentation_net("small", 1, 4, 8, volume_net=volume_net)
    b = build_boundary_net("small", 1, 8, volume_net=volume_net)
    volume = torch.rand(1, 1, 3, 11, 9)
    assert q(volume).shape == (1, 4, 3, 11, 9)
    with torch.no_grad():
        scores = b(volume)
    assert scores.shape == (1, 1, 3, 11, 9) and float(scores.min()) >= 0 and float(scores.max()) < 1e-3
    if volume_net == "3d":
        assert isinstance(b, BoundaryNet) and b.dims == 3
        with pytest.raises(ValueError, match="volumes for this 3D network"):
            q(torch.rand(1, 1, 11, 9))
    with pytest.raises(ValueError, match="volume_net"):
        build_segmentation_net("small", 1, 4, volume_net="2.5d")


@pytest.mark.parametrize("scale", [1.0, 0.5], ids=["full", "half"])
def test_3d_propagation_reaches_unscribbled_slices_and_its_gradient_reaches_b(tmp_path, scale):
    sample = ACDCVolumeDataset(make_volumes(tmp_path / "vol", patients=(1,)))[0]
    boundary = torch.full((1, 1, 3, 12, 10), 1e-3, dtype=torch.float64, requires_grad=True)
    settings = PropagationSettings(backend="scipy", scale=scale)
    P, reachable, _ = propagate_scribbles(boundary, sample.scribbles[None], 4, settings)
    assert P.shape == (1, 4, 3, 12, 10) and reachable.shape == (1, 3, 12, 10) and bool(reachable.all())
    torch.testing.assert_close(P.sum(dim=1), torch.ones(1, 3, 12, 10, dtype=torch.float64))
    # The middle slice has no left-ventricle scribble: in 3D it gets it from its neighbours.
    assert float(P.detach()[0, 3, 1, 5, 5]) > 0.5
    q = torch.zeros(1, 4, 3, 12, 10, dtype=torch.float64, requires_grad=True)
    loss = rawks_loss(P, q, 2.0, reachable, reduction="none")
    assert loss.shape == (1, 3, 12, 10)
    loss.mean().backward()
    assert torch.isfinite(boundary.grad).all() and float(boundary.grad.abs().sum()) > 0
    assert float(q.grad.abs().sum()) > 0
    # Slice by slice, the middle slice sees background scribbles only.
    P2, reachable2, _ = propagate_scribbles(
        boundary.detach(), sample.scribbles[None], 4, PropagationSettings(backend="scipy", volume="slices")
    )
    assert P2.shape == (1, 4, 3, 12, 10) and reachable2.shape == (1, 3, 12, 10)
    assert float(P2[0, 3, 1, 5, 5]) == 0.0 and float(P2[0, 0, 1, 5, 5]) == pytest.approx(1.0)
    torch.testing.assert_close(
        P2[0, :, 0], propagate_scribbles(boundary.detach()[:, :, 0], sample.scribbles[None, 0], 4, EXACT)[0][0]
    )


def _tiny_volume_run(tmp_path, name, **overrides):
    root = make_volumes(tmp_path / "vol")
    settings = dict(
        data="acdc-volumes",
        data_root=str(root),
        steps=2,
        batch_size=2,
        q_width=8,
        b_width=8,
        backend="scipy",
        eval_every=2,
        checkpoint_every=2,
        log_every=1,
        figures=2,
        progress=False,
        out=str(tmp_path / name),
    )
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.parametrize("volume_net", ["per-slice", "3d"])
def test_training_steps_on_volumes_end_to_end(tmp_path, volume_net):
    config = _tiny_volume_run(tmp_path, volume_net, volume_net=volume_net)
    summary = train(config)
    out = Path(config.out)
    rows = list(csv.DictReader(open(out / "metrics.csv", newline="")))
    losses = [float(r["loss"]) for r in rows if r["kind"] == "train"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    for split in ("train", "val"):
        metrics = summary.metrics[split]
        assert 0 <= metrics["p_miou"] <= 100 and 0 <= metrics["q_miou"] <= 100 and metrics["images"] >= 1
        assert (out / "figures" / f"step000002_{split}.png").is_file()
    payload = load_checkpoint(out / "checkpoint.pt")
    assert payload["meta"]["volumes"] is True and payload["config"]["volume_net"] == volume_net
    record = payload["training_data"]
    assert record["volumes"] is True and record["image_size"] == {"min": [3, 12, 10], "max": [3, 12, 10]}
    assert record["data"] == "acdc-volumes" and record["data_root_name"] == "vol" and record["in_channels"] == 1
    assert record["splits"]["val"] == {"count": 1, "names": ["patient005_frame01"]}
    _, q_net, b_net, _ = networks_from_checkpoint(payload)
    assert q_net(torch.rand(1, 1, 3, 12, 10)).shape == (1, 4, 3, 12, 10)
    assert b_net(torch.rand(1, 1, 3, 12, 10)).shape == (1, 1, 3, 12, 10)


def test_rawks_train_and_eval_on_volumes(tmp_path, capsys):
    root = make_volumes(tmp_path / "vol")
    out = tmp_path / "cli"
    flags = ["--data", "acdc-volumes", "--data-root", str(root), "--steps", "1", "--batch-size", "1"]
    flags += ["--q-width", "8", "--b-width", "8", "--backend", "scipy", "--figures", "1", "--no-progress"]
    assert main(["train", *flags, "--out", str(out)]) == 0
    capsys.readouterr()
    args = ["eval", "--checkpoint", str(out / "checkpoint.pt"), "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "e3d")]) == 0
    assert main([*args, "--volume-propagation", "slices", "--figures", "1", "--out", str(tmp_path / "e2d")]) == 0
    three = json.loads((tmp_path / "e3d" / "eval.json").read_text())
    slices = json.loads((tmp_path / "e2d" / "eval.json").read_text())
    assert three["volume_propagation"] == "3d" and slices["volume_propagation"] == "slices"
    assert three["metrics"]["val"]["p_miou"] != slices["metrics"]["val"]["p_miou"]
    assert (tmp_path / "e2d" / "eval_val.png").is_file()
    # A checkpoint trained on images (the 2D ACDC slices) does not evaluate on volumes.
    h5py = pytest.importorskip("h5py")
    slices = tmp_path / "slices"
    slices.mkdir()
    sample = ACDCVolumeDataset(root)[0]
    for d in range(3):
        with h5py.File(slices / f"patient001_frame01_slice_{d}.h5", "w") as f:
            f["image"] = sample.image[0, d].numpy()
            f["label"] = sample.mask[d].numpy().astype(np.uint8)
            f["scribble"] = np.where(sample.scribbles[d].numpy() < 0, 4, sample.scribbles[d].numpy()).astype(np.uint16)
    image_run = tmp_path / "img"
    flags = ["--data", "acdc", "--data-root", str(slices), "--data-option", "val_patients=none"]
    flags += ["--steps", "1", "--batch-size", "1", "--q-width", "8", "--b-width", "8", "--backend", "scipy"]
    assert main(["train", *flags, "--figures", "0", "--no-progress", "--out", str(image_run)]) == 0
    capsys.readouterr()
    args = ["eval", "--checkpoint", str(image_run / "checkpoint.pt"), "--data", "acdc-volumes"]
    assert main([*args, "--data-root", str(root), "--no-progress"]) == 2
    assert "trained on images" in capsys.readouterr().err


@pytest.mark.skipif(not (SHARED / "acdc-volumes").is_dir(), reason="../shared/data/acdc-volumes is not present")
def test_real_acdc_volume_loads_and_propagates_in_3d():
    pytest.importorskip("h5py")
    full = build_splits("acdc-volumes", str(SHARED / "acdc-volumes")).val[0]
    both = full.scribbles >= 0
    assert float((full.scribbles[both] == full.mask[both]).float().mean()) > 0.95
    splits = build_splits("acdc-volumes", str(SHARED / "acdc-volumes"), {"downsample": "8"})
    assert all(n.startswith("patient005") for n in splits.val.names) and len(splits.train) >= 2
    s = splits.val[0]
    depth, height, width = s.scribbles.shape
    assert s.image.shape == (1, depth, height, width) and depth >= 5 and full.image.shape[1] == depth
    boundary = torch.full((1, 1, depth, height, width), 1e-3, requires_grad=True)
    P, reachable, _ = propagate_scribbles(boundary, s.scribbles[None], 4, EXACT)
    assert P.shape == (1, 4, depth, height, width) and bool(reachable.all())
    assert float((P.argmax(1)[0] == s.mask).float().mean()) > 0.5
    P.max(dim=1).values.sum().backward()
    assert torch.isfinite(boundary.grad).all()
