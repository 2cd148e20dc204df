"""The ``rawks`` command: propagate, train (and resume), eval, demo, and its errors."""

import json

import numpy as np
import pytest
from PIL import Image
from test_training_data import SHARED

from rawks_triton.cli import main

SMALL = [
    "--data-option",
    "train_count=4",
    "--data-option",
    "val_count=2",
    "--data-option",
    "height=32",
    "--data-option",
    "width=40",
]


def two_region_image(path_image, path_scribbles, h=30, w=40):
    image = np.full((h, w, 3), 60, dtype=np.uint8)
    image[:, w // 2 :] = 200
    Image.fromarray(image).save(path_image)
    scribbles = np.zeros((h, w), dtype=np.uint8)  # 0 = unlabelled, GrabCut style
    scribbles[5:25, 4] = 1
    scribbles[5:25, w - 5] = 2
    Image.fromarray(scribbles).save(path_scribbles)


def _propagate(tmp_path, *flags, out="out"):
    """rawks propagate on tmp_path/im.png and im-anno.png, writing tmp_path/<out>/im_*."""
    image, scribbles = str(tmp_path / "im.png"), str(tmp_path / "im-anno.png")
    return main(["propagate", "--image", image, "--scribbles", scribbles, *flags, "--out", str(tmp_path / out / "im")])


def test_propagate_writes_labels_probabilities_and_confidence(tmp_path, capsys):
    two_region_image(tmp_path / "im.png", tmp_path / "im-anno.png")
    assert _propagate(tmp_path, "--unlabelled", "0") == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "im_labels.png"))
    assert labels.shape == (30, 40)
    # columns 19 and 20 are the edge itself: a wall no walk crosses alive, unreachable, so P is uniform there
    assert (labels[:, :19] == 1).mean() > 0.95 and (labels[:, 21:] == 2).mean() > 0.95
    P = np.load(tmp_path / "out" / "im_probabilities.npy")
    assert P.shape == (3, 30, 40) and np.allclose(P.sum(0), 1, atol=1e-5) and np.all(P[0] == 0)
    confidence = np.asarray(Image.open(tmp_path / "out" / "im_confidence.png"))
    assert confidence.shape == (30, 40) and confidence.max() == 255
    assert "wrote" in capsys.readouterr().out


def test_train_resume_eval_and_propagate_with_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *SMALL,
                "--steps",
                "2",
                "--batch-size",
                "2",
                "--eval-every",
                "2",
                "--checkpoint-every",
                "2",
                "--figures",
                "1",
                "--reach-weight",
                "0.01",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (out / "checkpoint.pt").is_file() and (out / "figures" / "step000002_val.png").is_file()
    assert main(["train", "--out", str(out), "--resume", "--steps", "3", "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 3 and config["reach_weight"] == 0.01 and config["data_options"]["train_count"] == "4"
    assert json.loads((out / "summary.json").read_text())["step"] == 3
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out / "checkpoint.pt"),
                "--figures",
                "1",
                "--propagation-scale",
                "0.5",
                "--no-progress",
            ]
        )
        == 0
    )
    record = json.loads((out / "eval.json").read_text())
    metrics = record["metrics"]
    assert record["propagation_scale"] == 0.5
    assert set(metrics) == {"train", "val"} and 0 <= metrics["val"]["q_miou"] <= 100
    assert (out / "eval_val.png").is_file()
    # --data-option without --data changes one option of the checkpoint's data set, keeping the others
    args = ["eval", "--checkpoint", str(out / "checkpoint.pt"), "--data-option", "val_count=1", "--figures", "0"]
    assert main(args + ["--out", str(tmp_path / "e1"), "--no-progress"]) == 0
    record = json.loads((tmp_path / "e1" / "eval.json").read_text())
    assert record["data_options"]["val_count"] == "1" and record["data_options"]["train_count"] == "4"
    assert record["metrics"]["val"]["images"] == 1
    two_region_image(tmp_path / "im.png", tmp_path / "im-anno.png", h=32, w=40)
    assert _propagate(tmp_path, "--unlabelled", "0", "--checkpoint", str(out / "checkpoint.pt"), out="p") == 0
    assert np.load(tmp_path / "p" / "im_probabilities.npy").shape == (3, 32, 40)
    assert (tmp_path / "p" / "im_q_labels.png").is_file()


def test_clear_errors_for_missing_or_malformed_data(tmp_path, capsys):
    assert (
        main(["train", "--data", "grabcut", "--data-root", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
        == 2
    )
    assert f"data_root {tmp_path / 'nothing'} does not exist" in capsys.readouterr().err
    (tmp_path / "folder" / "images").mkdir(parents=True)
    assert (
        main(["train", "--data", "folder", "--data-root", str(tmp_path / "folder"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "folder dataset scribbles: expected a folder at" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "never-ran"), "--resume"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert (
        main(["propagate", "--image", str(tmp_path / "none.png"), "--scribbles", "x.png", "--out", str(tmp_path / "p")])
        == 2
    )
    assert "no file at" in capsys.readouterr().err


def test_demo_runs_and_says_where_the_results_are(tmp_path, capsys):
    tables = {}
    for jobs in ("1", "2"):  # one after the other, or side by side in two processes: the same results
        out = tmp_path / f"demo{jobs}"
        flags = ["--steps", "2", "--train-count", "4", "--val-count", "2", "--jobs", jobs]
        assert main(["demo", *flags, "--out", str(out), "--no-progress"]) == 0
        printed = capsys.readouterr().out
        table = (out / "results.md").read_text()
        assert "| joint (RAWKS) |" in table and "| sparse-loss baseline |" in table
        assert str(out / "results.md") in printed and "on 1 CPU thread" in printed
        assert f"figures: {out / 'joint' / 'figures'} (image, scribbles, the learned boundaries B" in printed
        assert (out / "joint" / "figures" / "step000002_val.png").is_file()
        tables[jobs] = table.split("Total time")[0]
    assert tables["1"] == tables["2"]
    # The joint run's figure rows carry the learned boundaries (the column beside the image and scribbles).
    from rawks_triton.training import load_checkpoint, networks_from_checkpoint
    from rawks_triton.training.figures import figure_rows
    from rawks_triton.training.splits import build_splits

    config, q_net, b_net, _ = networks_from_checkpoint(load_checkpoint(tmp_path / "demo1" / "joint" / "checkpoint.pt"))
    splits = build_splits(config.data, None, config.data_options)
    (row,) = figure_rows(splits.val, 1, q_net, b_net, config.propagation, config.alpha)
    assert row["boundary"].shape == row["image"].shape[1:] and row["P"] is not None


# ---- a file that is not a checkpoint: one line, exit 2 ------------------------------------------


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    assert (
        main(
            [
                "train",
                *SMALL,
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--eval-every",
                "100",
                "--figures",
                "0",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    return (out / "checkpoint.pt").read_bytes()


class RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _edited(real: bytes, path, edit):
    import io

    import torch

    payload = torch.load(io.BytesIO(real), weights_only=True)
    edit(payload)
    torch.save(payload, path)


BAD_CHECKPOINTS = {
    # name: (writer(path, real bytes, tmp_path), what the message must say)
    "truncated": (lambda p, real, t: p.write_bytes(real[: len(real) // 2]), "cannot be read"),
    "random-bytes": (lambda p, real, t: p.write_bytes(np.random.default_rng(11).bytes(3000)), "cannot be read"),
    "empty": (lambda p, real, t: p.write_bytes(b""), "cannot be read"),
    "bare-tensor": (
        lambda p, real, t: __import__("torch").save(__import__("torch").zeros(2, 3), p),
        "holds a tensor of shape [2, 3]",
    ),
    "dict-without-keys": (lambda p, real, t: __import__("torch").save({"weights": 1}, p), "it lacks ['config', 'step'"),
    "unknown-config-field": (
        lambda p, real, t: _edited(real, p, lambda d: d["config"].update(colour="red")),
        "unknown TrainConfig field(s) ['colour']",
    ),
    "invalid-config-value": (
        lambda p, real, t: _edited(real, p, lambda d: d["config"].update(protocol="weak")),
        "`protocol` must be one of",
    ),
    "runs-code": (
        lambda p, real, t: _edited(real, p, lambda d: d.update(meta=RunsCode(t / "code-ran"))),
        "could run code",
    ),
    "missing": (lambda p, real, t: None, "found nothing"),
}


def _run_command(command, checkpoint, tmp_path):
    if command == "eval":
        return main(["eval", "--checkpoint", str(checkpoint), "--no-progress"])
    if command == "propagate":
        two_region_image(tmp_path / "im.png", tmp_path / "im-anno.png", h=32, w=40)
        return _propagate(tmp_path, "--unlabelled", "0", "--checkpoint", str(checkpoint), out="p")
    return main(["train", "--resume", "--out", str(checkpoint.parent), "--no-progress"])


@pytest.mark.parametrize("kind", list(BAD_CHECKPOINTS))
@pytest.mark.parametrize("command", ["eval", "propagate", "train"])
def test_a_bad_checkpoint_is_one_error_line_and_exit_2(tmp_path, capsys, real_checkpoint, command, kind):
    write, says = BAD_CHECKPOINTS[kind]
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    checkpoint.parent.mkdir()
    write(checkpoint, real_checkpoint, tmp_path)
    assert _run_command(command, checkpoint, tmp_path) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{captured.err}"
    assert lines[0].startswith(f"rawks {command}: error: ") and str(checkpoint) in lines[0], lines[0]
    assert "a checkpoint written by `rawks train`" in lines[0] and says in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "code-ran").exists(), "loading the checkpoint ran code from it"


# ---- rawks propagate: what the scribble values mean -------------------------------------------


def palette_scribbles(path, values: np.ndarray):
    """A palette PNG (as GrabCut's scribbles are) holding ``values`` as palette indices."""
    image = Image.fromarray(values.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [128] * (3 * 253))
    image.save(path)


def _grabcut_style(tmp_path, h=30, w=40):
    """Two half images and a GrabCut-coded palette scribble map: 0 none, 1 left (foreground), 2 right (background)."""
    two_region_image(tmp_path / "im.png", tmp_path / "unused.png", h, w)
    values = np.zeros((h, w), dtype=np.uint8)
    values[5:25, 4] = 1
    values[5:25, w - 5] = 2
    palette_scribbles(tmp_path / "im-anno.png", values)


def _one_error_line(capsys):
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rawks propagate: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def test_propagate_refuses_a_map_where_every_pixel_is_a_scribble_and_names_the_likely_unlabelled_value(
    tmp_path, capsys
):
    _grabcut_style(tmp_path)
    assert _propagate(tmp_path) == 2  # the default --unlabelled 255 does not occur in a GrabCut file
    line = _one_error_line(capsys)
    assert "with --unlabelled 255" in line and "every pixel would be a scribble" in line
    assert "the most frequent value is 0 (96.7% of the pixels)" in line and "pass --unlabelled 0" in line
    assert not (tmp_path / "out").exists()


def test_propagate_refuses_a_map_that_labels_most_pixels_unless_allowed(tmp_path, capsys):
    two_region_image(tmp_path / "im.png", tmp_path / "unused.png")
    values = np.full((30, 40), 255, dtype=np.uint8)
    values[:, :14] = 0  # 70% of the pixels labelled, 30% unlabelled (255)
    values[:, 26:] = 1
    Image.fromarray(values).save(tmp_path / "im-anno.png")
    assert _propagate(tmp_path) == 2
    line = _one_error_line(capsys)
    assert "with --unlabelled 255, 70.0% of the pixels would be scribbles" in line and "--allow-dense" in line
    assert _propagate(tmp_path, "--allow-dense") == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "im_labels.png"))
    assert (labels[:, :14] == 0).all() and (labels[:, 26:] == 1).all()


def test_propagate_names_values_that_are_not_labels(tmp_path, capsys):
    _grabcut_style(tmp_path)
    assert _propagate(tmp_path, "--unlabelled", "0", "--num-labels", "2") == 2
    line = _one_error_line(capsys)
    assert "holds scribble value(s) [2] that are not labels: the labels are 0 .. 1 (--num-labels 2)" in line
    assert "--map VALUE=LABEL" in line


def test_propagate_maps_file_values_to_labels(tmp_path, capsys):
    _grabcut_style(tmp_path)
    # GrabCut coding -> the labels of --data grabcut: 0 background (file 2), 1 foreground (file 1).
    assert _propagate(tmp_path, "--unlabelled", "0", "--map", "1=1,2=0", "--num-labels", "2") == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "im_labels.png"))
    assert (labels[:, :19] == 1).mean() > 0.95 and (labels[:, 21:] == 0).mean() > 0.95  # 19, 20: the unreachable edge
    assert np.load(tmp_path / "out" / "im_probabilities.npy").shape == (2, 30, 40)
    assert capsys.readouterr().err == ""
    assert _propagate(tmp_path, "--unlabelled", "0", "--map", "1=1") == 2
    assert "holds scribble value(s) [2] that --map does not map" in _one_error_line(capsys)
    assert _propagate(tmp_path, "--unlabelled", "0", "--map", "1:1") == 2
    assert "--map expects VALUE=LABEL pairs" in _one_error_line(capsys)
    assert _propagate(tmp_path, "--unlabelled", "0", "--map", "0=1,1=1,2=0") == 2
    assert "--map maps 0, the --unlabelled value" in _one_error_line(capsys)


def test_propagate_warns_when_labels_below_the_largest_have_no_scribble(tmp_path, capsys):
    _grabcut_style(tmp_path)
    assert _propagate(tmp_path, "--unlabelled", "0") == 0
    err = capsys.readouterr().err
    assert err.startswith("rawks propagate: warning: ") and "no scribble of label(s) [0]" in err and "--map" in err


@pytest.mark.skipif(not (SHARED / "grabcut").is_dir(), reason="../shared/data/grabcut is not present")
def test_propagate_on_a_real_grabcut_scribble_file(tmp_path, capsys):
    root = SHARED / "grabcut"
    image, scribbles = root / "images" / "153077.jpg", root / "scribbles-set-1" / "153077-anno.png"
    base = ["propagate", "--image", str(image), "--scribbles", str(scribbles), "--out", str(tmp_path / "im")]
    assert main(base) == 2
    assert "pass --unlabelled 0" in _one_error_line(capsys)
    assert main(base + ["--unlabelled", "0", "--map", "1=1,2=0"]) == 0
    labels = np.asarray(Image.open(tmp_path / "im_labels.png"))
    truth = np.asarray(Image.open(root / "ground-truth" / "153077.png").convert("L"))
    scored = truth != 128
    error = float(((labels == 1) != (truth == 255))[scored].mean())
    assert error < 0.25, f"pixel error {error:.3f} of the hand-made boundary on 153077"
