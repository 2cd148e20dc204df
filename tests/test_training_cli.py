"""The ``rawks`` command: propagate, train (and resume), eval, demo, and its errors."""

import json

import numpy as np
import pytest
from PIL import Image

from rawks_triton.cli import main

SMALL = ["--data-option", "train_count=4", "--data-option", "val_count=2", "--data-option", "height=32", "--data-option", "width=40"]


def two_region_image(path_image, path_scribbles, h=30, w=40):
    image = np.full((h, w, 3), 60, dtype=np.uint8)
    image[:, w // 2 :] = 200
    Image.fromarray(image).save(path_image)
    scribbles = np.zeros((h, w), dtype=np.uint8)  # 0 = unlabelled, GrabCut style
    scribbles[5:25, 4] = 1
    scribbles[5:25, w - 5] = 2
    Image.fromarray(scribbles).save(path_scribbles)


def test_propagate_writes_labels_probabilities_and_confidence(tmp_path, capsys):
    two_region_image(tmp_path / "im.png", tmp_path / "im-anno.png")
    assert main(["propagate", "--image", str(tmp_path / "im.png"), "--scribbles", str(tmp_path / "im-anno.png"),
                 "--unlabelled", "0", "--out", str(tmp_path / "out" / "im")]) == 0
    labels = np.asarray(Image.open(tmp_path / "out" / "im_labels.png"))
    assert labels.shape == (30, 40)
    assert (labels[:, :20] == 1).mean() > 0.95 and (labels[:, 20:] == 2).mean() > 0.95
    P = np.load(tmp_path / "out" / "im_probabilities.npy")
    assert P.shape == (3, 30, 40) and np.allclose(P.sum(0), 1, atol=1e-5) and np.all(P[0] == 0)
    confidence = np.asarray(Image.open(tmp_path / "out" / "im_confidence.png"))
    assert confidence.shape == (30, 40) and confidence.max() == 255
    assert "wrote" in capsys.readouterr().out


def test_train_resume_eval_and_propagate_with_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--steps", "2", "--batch-size", "2", "--eval-every", "2", "--checkpoint-every", "2",
                 "--figures", "1", "--reach-weight", "0.01", "--out", str(out), "--no-progress"]) == 0
    assert (out / "checkpoint.pt").is_file() and (out / "figures" / "step000002_val.png").is_file()
    assert main(["train", "--out", str(out), "--resume", "--steps", "3", "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["steps"] == 3 and config["reach_weight"] == 0.01 and config["data_options"]["train_count"] == "4"
    assert json.loads((out / "summary.json").read_text())["step"] == 3
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--figures", "1", "--propagation-scale", "0.5", "--no-progress"]) == 0
    record = json.loads((out / "eval.json").read_text())
    metrics = record["metrics"]
    assert record["propagation_scale"] == 0.5
    assert set(metrics) == {"train", "val"} and 0 <= metrics["val"]["q_miou"] <= 100
    assert (out / "eval_val.png").is_file()
    two_region_image(tmp_path / "im.png", tmp_path / "im-anno.png", h=32, w=40)
    assert main(["propagate", "--image", str(tmp_path / "im.png"), "--scribbles", str(tmp_path / "im-anno.png"),
                 "--unlabelled", "0", "--checkpoint", str(out / "checkpoint.pt"), "--out", str(tmp_path / "p" / "im")]) == 0
    assert np.load(tmp_path / "p" / "im_probabilities.npy").shape == (3, 32, 40)
    assert (tmp_path / "p" / "im_q_labels.png").is_file()


def test_clear_errors_for_missing_or_malformed_data(tmp_path, capsys):
    assert main(["train", "--data", "grabcut", "--data-root", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert f"data_root {tmp_path / 'nothing'} does not exist" in capsys.readouterr().err
    (tmp_path / "folder" / "images").mkdir(parents=True)
    assert main(["train", "--data", "folder", "--data-root", str(tmp_path / "folder"), "--out", str(tmp_path / "o")]) == 2
    assert "folder dataset scribbles: expected a folder at" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "never-ran"), "--resume"]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["propagate", "--image", str(tmp_path / "none.png"), "--scribbles", "x.png", "--out", str(tmp_path / "p")]) == 2
    assert "no file at" in capsys.readouterr().err


def test_demo_runs_and_says_where_the_results_are(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--steps", "2", "--train-count", "4", "--val-count", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    table = (out / "results.md").read_text()
    assert "| joint (RAWKS) |" in table and "| sparse-loss baseline |" in table
    assert str(out / "results.md") in printed and (out / "joint" / "figures").is_dir()
