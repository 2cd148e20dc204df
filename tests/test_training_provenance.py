"""Checkpoints say what they were trained on: the record, old checkpoints without it, and what
``rawks eval`` and ``rawks propagate`` print and warn."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_training_cli import SMALL, _grabcut_style, _propagate, palette_scribbles, two_region_image
from test_training_data import make_grabcut

from rawks_triton.cli import main
from rawks_triton.training import load_checkpoint, networks_from_checkpoint
from rawks_triton.training.checkpoint import CheckpointError
from rawks_triton.training.provenance import NOT_RECORDED, describe

TRAIN = ["train", "--steps", "1", "--batch-size", "2", "--eval-every", "100", "--figures", "0", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"synthetic": path, "grabcut": path}: one-step runs on 32x40 synthetic scenes and a tiny GrabCut folder."""
    root = tmp_path_factory.mktemp("provenance")
    grabcut = make_grabcut(root / "grabcut", names=("x1", "x2", "x3"), h=20, w=24)
    runs = {
        "synthetic": [*SMALL],
        "grabcut": ["--data", "grabcut", "--data-root", str(grabcut), "--data-option", "holdout=x3"],
    }
    for name, flags in runs.items():
        assert main([*TRAIN, *flags, "--out", str(root / name)]) == 0
    return {name: root / name / "checkpoint.pt" for name in runs}


def test_the_checkpoint_records_the_training_data(checkpoints):
    record = load_checkpoint(checkpoints["synthetic"])["training_data"]
    assert record["data"] == "synthetic" and record["data_root"] is None and record["description"].startswith("synth")
    assert record["num_labels"] == 3 and record["class_names"] == ["background", "texture 1", "texture 2"]
    assert record["background"] == 0 and record["in_channels"] == 3 and record["volumes"] is False
    assert record["image_size"] == {"min": [32, 40], "max": [32, 40]} and record["propagation_scale"] == 1.0
    assert record["splits"]["train"]["count"] == 4 and record["splits"]["val"]["count"] == 2
    assert record["data_options"] == {"train_count": "4", "val_count": "2", "height": "32", "width": "40"}
    record = load_checkpoint(checkpoints["grabcut"])["training_data"]
    assert record["data"] == "grabcut" and record["data_root_name"] == "grabcut"
    assert record["class_names"] == ["background", "foreground"] and record["background"] == 0
    assert record["splits"] == {"train": {"count": 2, "names": ["x1", "x2"]}, "val": {"count": 1, "names": ["x3"]}}
    assert record["image_size"] == {"min": [20, 24], "max": [20, 24]}
    line = describe(load_checkpoint(checkpoints["grabcut"]))
    assert line.startswith("trained on grabcut from ") and "2 classes (0 background, 1 foreground)" in line
    assert "RGB images of 20x24; 2 train, 1 val images" in line


def _old(checkpoint, path):
    """A copy of ``checkpoint`` as rawks wrote it before the record existed."""
    payload = torch.load(checkpoint, weights_only=True)
    del payload["training_data"]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


def test_an_old_checkpoint_without_the_record_loads_and_says_so(tmp_path, checkpoints, capsys):
    old = _old(checkpoints["synthetic"], tmp_path / "old" / "checkpoint.pt")
    payload = load_checkpoint(old)
    _, q_net, b_net, meta = networks_from_checkpoint(payload, source=old)
    assert meta["num_labels"] == 3 and b_net is not None
    line = describe(payload)
    assert line.startswith(NOT_RECORDED) and "--data 'synthetic'" in line and "3 labels" in line
    assert main(["eval", "--checkpoint", str(old), "--no-progress"]) == 0
    assert f"checkpoint {old}: training data not recorded" in capsys.readouterr().out
    two_region_image(tmp_path / "im.png", tmp_path / "im-anno.png", h=32, w=40)
    assert _propagate(tmp_path, "--unlabelled", "0", "--map", "1=1,2=0", "--checkpoint", str(old)) == 0
    captured = capsys.readouterr()
    assert "training data not recorded" in captured.out
    assert "trained on generated synthetic scenes" in captured.err  # the config still names the data set


def test_a_malformed_record_is_a_clear_error(tmp_path, checkpoints):
    payload = torch.load(checkpoints["synthetic"], weights_only=True)
    payload["training_data"]["class_names"] = ["background"]
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"bad.pt .* 'training_data' record is malformed: it names 1 classes"):
        load_checkpoint(tmp_path / "bad.pt")


def test_eval_prints_the_training_data(tmp_path, checkpoints, capsys):
    assert main(["eval", "--checkpoint", str(checkpoints["grabcut"]), "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {checkpoints['grabcut']}: trained on grabcut" in out and "not on the checkpoint's" not in out
    root = str(checkpoints["grabcut"].parent.parent / "grabcut")
    flags = ["--data", "grabcut", "--data-root", root, "--data-option", "holdout=x1"]
    assert main(["eval", "--checkpoint", str(checkpoints["grabcut"]), *flags, "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "evaluating on --data grabcut" in captured.out
    # x1 trained the checkpoint: the val split of this evaluation is not held out, and eval says so.
    assert "rawks eval: warning: 1 of the 1 val images were training images of the checkpoint (x1)" in captured.err


def _warnings(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("rawks propagate: warning: ")]


def test_propagate_with_a_synthetic_checkpoint_warns_that_it_was_trained_on_synthetic_scenes(
    tmp_path, checkpoints, capsys
):
    _grabcut_style(tmp_path, h=32, w=40)
    checkpoint = str(checkpoints["synthetic"])
    assert _propagate(tmp_path, "--unlabelled", "0", "--map", "1=1,2=0", "--checkpoint", checkpoint) == 0
    captured = capsys.readouterr()
    assert f"checkpoint {checkpoint}: trained on synthetic" in captured.out
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 2, captured.err
    assert "trained on generated synthetic scenes (--data synthetic), not on photographs" in warnings[0]
    # The 3 classes of the checkpoint against the scribbles' labels 0 and 1.
    assert "the scribbles hold labels [0, 1]" in warnings[1] and "no scribble of 2 texture 2" in warnings[1]
    assert "3 classes of --data synthetic (0 background, 1 texture 1, 2 texture 2)" in warnings[1]


def test_propagate_names_the_checkpoints_classes_when_scribbles_are_outside_them(tmp_path, checkpoints, capsys):
    _grabcut_style(tmp_path, h=20, w=24)
    checkpoint = str(checkpoints["grabcut"])
    # The GrabCut file values 1 and 2 without --map: 2 is not a class of the 2-class checkpoint.
    assert _propagate(tmp_path, "--unlabelled", "0", "--checkpoint", checkpoint) == 2
    err = capsys.readouterr().err
    assert "holds scribble value(s) [2] that are not labels" in err
    assert f"checkpoint {checkpoint}: 2 classes of --data grabcut (0 background, 1 foreground)" in err
    # With the right --map: no warning at all (same data set kind, same size, every class scribbled).
    assert _propagate(tmp_path, "--unlabelled", "0", "--map", "1=1,2=0", "--checkpoint", checkpoint) == 0
    assert _warnings(capsys) == []
    # --num-labels 3 propagates 3 labels with the boundaries of a 2-class checkpoint, and says so.
    assert _propagate(tmp_path, "--unlabelled", "0", "--num-labels", "3", "--checkpoint", checkpoint) == 0
    warnings = _warnings(capsys)
    assert len(warnings) == 2
    assert "propagated as 3 labels, and checkpoint" in warnings[0] and "2 classes of --data grabcut" in warnings[0]
    assert "the scribbles hold labels [1, 2]" in warnings[1] and "no scribble of 0 background" in warnings[1]


def test_propagate_warns_on_an_image_far_from_the_training_size(tmp_path, checkpoints, capsys):
    two_region_image(tmp_path / "im.png", tmp_path / "unused.png", h=60, w=80)
    values = np.zeros((60, 80), dtype=np.uint8)
    values[10:50, 5], values[10:50, 75] = 1, 2
    palette_scribbles(tmp_path / "im-anno.png", values)
    checkpoint = str(checkpoints["grabcut"])
    assert _propagate(tmp_path, "--unlabelled", "0", "--map", "1=1,2=0", "--checkpoint", checkpoint) == 0
    (warning,) = _warnings(capsys)
    assert "the image is 60x80, and checkpoint" in warning and "trained on grabcut images of 20x24" in warning
    assert np.asarray(Image.open(tmp_path / "out" / "im_labels.png")).shape == (60, 80)
