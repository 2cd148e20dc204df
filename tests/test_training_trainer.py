"""The trainer: every protocol on tiny data (the loss falls, outputs are finite and shaped right),
exact resume, the frozen boundaries of joint-then-q, evaluation metrics, configuration errors."""

import csv
import io
import math
import sys

import pytest
import torch

from rawks_triton.training import TrainConfig, Trainer, train
from rawks_triton.training.evaluate import ConfusionMatrix, evaluate
from rawks_triton.training.loop import reach_penalty, step_indices
from rawks_triton.training.report import CSV_FIELDS

TINY = {"train_count": 6, "val_count": 2, "height": 32, "width": 40}


def tiny(tmp_path, name="run", **overrides):
    settings = dict(
        data="synthetic",
        data_options=dict(TINY),
        steps=20,
        batch_size=2,
        lr=5e-3,
        lr_schedule="constant",
        eval_every=20,
        checkpoint_every=10,
        log_every=5,
        figures=1,
        progress=False,
        out=str(tmp_path / name),
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("protocol", ["joint", "joint-then-q", "sparse", "dense"])
def test_each_protocol_trains_and_its_loss_falls(tmp_path, protocol):
    trainer = Trainer(tiny(tmp_path, protocol=protocol))
    fixed = trainer.batch(0)
    phase = trainer.config.phase(0)
    with torch.no_grad():
        before = float(trainer.loss(fixed, phase))
    summary = trainer.run()
    with torch.no_grad():
        after = float(trainer.loss(fixed, phase))
    assert math.isfinite(before) and math.isfinite(after)
    assert after < before, f"{protocol}: loss on a fixed batch went from {before:.4f} to {after:.4f}"
    out = summary.out
    assert (out / "checkpoint.pt").is_file() and (out / "config.json").is_file() and (out / "summary.json").is_file()
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["step000020_train.png", "step000020_val.png"]
    rows = _rows(out / "metrics.csv")
    assert [int(r["step"]) for r in rows if r["kind"] == "train"] == [5, 10, 15, 20]
    assert {r["split"] for r in rows if r["kind"] == "eval"} == {"train", "val"}
    for split, metrics in summary.metrics.items():
        assert metrics["images"] == len(getattr(trainer.splits, split))
        assert 0 <= metrics["q_miou"] <= 100
        if protocol in ("joint", "joint-then-q"):
            assert 0 <= metrics["p_miou"] <= 100 and 0 <= metrics["abstained"] <= 100
        else:
            assert "p_miou" not in metrics


def test_resume_continues_exactly(tmp_path):
    config = tiny(
        tmp_path, "straight", steps=6, checkpoint_every=3, log_every=3, eval_every=6, figures=0, reach_weight=0.01
    )
    straight = Trainer(config)
    straight.run()
    interrupted = tiny(
        tmp_path, "resumed", steps=6, checkpoint_every=3, log_every=3, eval_every=6, figures=0, reach_weight=0.01
    )
    first = train(interrupted, stop_after=3)
    assert first.step == 3
    resumed = Trainer(TrainConfig(out=interrupted.out), resume=True)
    assert resumed.start_step == 3 and resumed.config.reach_weight == 0.01
    resumed.run()
    for name in ("q_net", "b_net"):
        a, b = getattr(straight, name).state_dict(), getattr(resumed, name).state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}.{key} differs after resume"
    losses = lambda out: [r["loss"] for r in _rows(out / "metrics.csv") if r["kind"] == "train"]  # noqa: E731
    assert losses(straight.out) == losses(resumed.out) and len(losses(resumed.out)) == 2


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*empty.checkpoint.pt"):
        Trainer(TrainConfig(out=str(tmp_path / "empty")), resume=True)


def test_joint_then_q_freezes_the_boundaries(tmp_path):
    config = tiny(tmp_path, protocol="joint-then-q", steps=6, q_only_steps=3, eval_every=100, figures=0)
    assert [config.phase(s) for s in range(6)] == ["joint"] * 3 + ["q-only"] * 3
    trainer = Trainer(config)
    trainer.run(stop_after=3)
    b_after_joint = {k: v.clone() for k, v in trainer.b_net.state_dict().items()}
    q_after_joint = {k: v.clone() for k, v in trainer.q_net.state_dict().items()}
    trainer.start_step = 3
    trainer.run()
    assert all(torch.equal(b_after_joint[k], v) for k, v in trainer.b_net.state_dict().items())
    assert any(not torch.equal(q_after_joint[k], v) for k, v in trainer.q_net.state_dict().items())


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(protocol="weak"), r"`protocol` must be one of .*got 'weak'"),
        (dict(propagation_scale=0.0), r"`propagation_scale` must be in \(0, 1\], got 0.0"),
        (dict(q_only_steps=5), r"`q_only_steps` is only for protocol='joint-then-q'"),
        (dict(protocol="joint-then-q", q_only_steps=20), r"`q_only_steps` must be < `steps` \(20\), got 20"),
        (dict(steps=0), r"`steps` must be >= 1, got 0"),
        (dict(weights="/nonexistent.pt"), r"`weights` must be a local state-dict file"),
        (dict(data_options={"bogus": 1}), r"unknown option\(s\) \['bogus'\]"),
    ],
    ids=["protocol", "scale", "q-only-joint", "q-only-too-many", "steps", "weights", "data-option"],
)
def test_bad_configuration(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny(tmp_path, **overrides).validate()


def test_dense_protocol_needs_masks(tmp_path):
    from test_training_data import make_folder

    root = make_folder(tmp_path / "nomasks", masks=False)
    with pytest.raises(ValueError, match=r"protocol='dense' needs dense masks"):
        Trainer(
            TrainConfig(data="folder", data_root=str(root), protocol="dense", out=str(tmp_path / "o"), progress=False)
        )


def _tiny_data(kind, root):
    """(data, root, options) of a tiny data set on disk for each loader."""
    import test_training_data as make

    if kind == "folder":
        return "folder", make.make_folder(root, h=20, w=24), {}
    if kind == "grabcut":
        return "grabcut", make.make_grabcut(root, names=("x1", "x2", "x3"), h=20, w=24), {"holdout": "x3"}
    if kind == "acdc":
        return "acdc", make.make_acdc(root, count=2, h=20, w=24), {"val_patients": "patient002"}
    if kind == "scribblesup":
        return "scribblesup", make.make_scribblesup_flat(root, h=20, w=24), {"stroke_width": 1}
    return "synthetic", None, dict(TINY)


@pytest.mark.parametrize("kind", ["folder", "grabcut", "acdc", "scribblesup", "synthetic"])
def test_every_loader_trains_and_its_loss_falls(tmp_path, kind):
    data, root, options = _tiny_data(kind, tmp_path / "data")
    config = TrainConfig(
        data=data,
        data_root=None if root is None else str(root),
        data_options=options,
        steps=6,
        batch_size=2,
        lr=5e-3,
        lr_schedule="constant",
        augment=False,
        eval_every=6,
        checkpoint_every=6,
        log_every=3,
        figures=1,
        progress=False,
        out=str(tmp_path / "run"),
    )
    trainer = Trainer(config)
    fixed = trainer.batch(0)
    with torch.no_grad():
        before = float(trainer.loss(fixed, "joint"))
    summary = trainer.run()
    with torch.no_grad():
        after = float(trainer.loss(fixed, "joint"))
    assert math.isfinite(before) and math.isfinite(after)
    assert after < before, f"{kind}: loss on a fixed batch went from {before:.4f} to {after:.4f}"
    from rawks_triton.training.evaluate import predict

    sample = trainer.splits.train[0]
    out = predict([sample], trainer.splits.num_labels, trainer.q_net, trainer.b_net, config.propagation)
    L, (H, W) = trainer.splits.num_labels, sample.scribbles.shape
    assert out["q_logits"].shape == out["P"].shape == (1, L, H, W) and out["boundary"].shape == (1, 1, H, W)
    assert all(bool(torch.isfinite(out[k]).all()) for k in ("q_logits", "P", "boundary", "weight"))
    assert bool((out["boundary"] >= 0).all())
    assert "train" in summary.metrics and 0 <= summary.metrics["train"]["p_miou"] <= 100
    assert (summary.out / "figures" / "step000006_train.png").is_file()
    # The checkpoint says what it was trained on; the sizes come from the file headers where the format allows.
    record = torch.load(summary.checkpoint, weights_only=True)["training_data"]
    sizes = [list(d[i].image.shape[1:]) for _, d in trainer.splits.items() for i in range(len(d))]
    low, high = [min(s[k] for s in sizes) for k in (0, 1)], [max(s[k] for s in sizes) for k in (0, 1)]
    assert record["image_size"] == {"min": low, "max": high}
    assert record["data"] == data and record["data_root"] == config.data_root
    assert record["num_labels"] == L and record["class_names"] == list(trainer.splits.class_names)
    assert record["splits"] == {s: {"count": len(d), "names": d.names} for s, d in trainer.splits.items()}


def test_step_indices_cover_each_epoch_and_shard_for_ddp():
    seen = []
    for step in range(3):  # 10 images, global batch 4 -> 3 steps an epoch, the last padded
        indices, epoch = step_indices(step, 10, 4, seed=1)
        assert epoch == 0 and len(indices) == 4
        seen += indices
    assert set(seen) == set(range(10))
    assert step_indices(3, 10, 4, seed=1)[1] == 1
    assert step_indices(3, 10, 4, seed=1)[0] != step_indices(0, 10, 4, seed=1)[0]


def test_confusion_matrix_miou_and_accuracy():
    cm = ConfusionMatrix(3)
    truth = torch.tensor([0, 0, 1, 1, -1])
    pred = torch.tensor([0, 1, 1, 1, 2])
    cm.update(pred, truth)
    # class 0: 1 / 2; class 1: 2 / 3; class 2 never occurs (ignored pixel) -> left out
    assert cm.miou() == pytest.approx((0.5 + 2 / 3) / 2)
    assert cm.accuracy() == pytest.approx(0.75)


def test_evaluate_two_class_pixel_error_and_abstention():
    from rawks_triton.training.data import Sample

    class Two(list):
        num_labels = 2
        has_masks = True

    mask = torch.zeros(6, 8, dtype=torch.int64)
    mask[:, 4:] = 1
    mask[0, 0] = -1
    scribbles = torch.full((6, 8), -1)
    scribbles[:, 0] = 0
    scribbles[:, 7] = 1
    data = Two([Sample("s", torch.rand(3, 6, 8), scribbles, mask)])
    wall = lambda image: torch.where(torch.arange(8) == 4, 30.0, 1e-6).expand(image.shape[0], 1, 6, 8)  # noqa: E731
    metrics = evaluate(data, q_net=None, b_net=wall)
    assert metrics["p_pixel_error"] == pytest.approx(0.0) and metrics["p_miou"] == pytest.approx(100.0)
    assert 0 <= metrics["abstained"] < 100 and "q_miou" not in metrics


def test_reach_penalty_is_finite_and_reaches_the_boundary():
    from rawks_triton.training.propagate import PropagationSettings, propagate_scribbles

    boundary = torch.full((2, 1, 9, 11), 1e-3, requires_grad=True)
    scribbles = torch.full((2, 9, 11), -1)
    scribbles[0, 2, 2:6] = 0
    scribbles[0, 7, 5:9] = 1
    _, _, result = propagate_scribbles(boundary, scribbles, 2, PropagationSettings())
    penalty = reach_penalty(result)
    assert penalty.shape == (2,) and float(penalty[1].detach()) == 0.0  # no scribbles, no penalty
    penalty.sum().backward()
    assert math.isfinite(float(penalty[0].detach())) and float(penalty[0].detach()) > 0
    assert bool((boundary.grad[0] > 0).any()) and torch.all(boundary.grad[1] == 0)


# ---- resume inside a logging window ------------------------------------------------------------

DETERMINISTIC = tuple(f for f in CSV_FIELDS if f not in ("images_per_second", "seconds"))  # all but the timings


@pytest.fixture
def one_thread():
    """One CPU thread, so that every reduction runs in one order (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _window_run(tmp_path, name):
    # 10 steps, a train row every 5, checkpoints at 3, 6 and 9: a checkpoint inside each window.
    return tiny(tmp_path, name, steps=10, log_every=5, checkpoint_every=3, eval_every=10, figures=0)


def _deterministic_rows(out):
    return [{k: r[k] for k in DETERMINISTIC} for r in _rows(out / "metrics.csv")]


@pytest.mark.parametrize("interruption", ["stop-after-6", "stop-after-7", "ctrl-c-at-step-7"])
def test_resume_inside_a_logging_window_writes_the_rows_of_the_uninterrupted_run(tmp_path, one_thread, interruption):
    straight = Trainer(_window_run(tmp_path, "straight"))
    straight.run()
    config = _window_run(tmp_path, "resumed")
    if interruption.startswith("stop-after"):
        train(config, stop_after=int(interruption.rsplit("-", 1)[1]))
    else:
        trainer = Trainer(config)
        train_step = trainer.train_step

        def interrupted_at_7(step):
            if step == 7:
                raise KeyboardInterrupt
            return train_step(step)

        trainer.train_step = interrupted_at_7
        with pytest.raises(KeyboardInterrupt):
            trainer.run()
    resumed = Trainer(TrainConfig(out=config.out), resume=True)
    assert resumed.start_step in (6, 7) and resumed.window["steps"] == resumed.start_step - 5
    resumed.run()
    expected, got = _deterministic_rows(straight.out), _deterministic_rows(resumed.out)
    assert [r["step"] for r in got if r["kind"] == "train"] == ["5", "10"]
    assert got == expected, f"metrics.csv after resume differs:\n{got}\nuninterrupted:\n{expected}"
    for row in _rows(resumed.out / "metrics.csv"):
        if row["kind"] == "train":
            assert float(row["images_per_second"]) > 0 and float(row["seconds"]) > 0


def test_metrics_log_on_resume_drops_later_and_cut_short_rows(tmp_path):
    from rawks_triton.training.report import MetricsLog

    path = tmp_path / "metrics.csv"
    full = lambda step: ",".join([str(step), "joint", "train", "", "0.5"] + [""] * (len(CSV_FIELDS) - 5))  # noqa: E731
    path.write_text(",".join(CSV_FIELDS) + "\n" + "\n".join([full(5), full(10), full(15), "2,jo"]) + "\n")
    MetricsLog(path, resume_step=10)
    assert [r["step"] for r in _rows(path)] == ["5", "10"]
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]  # no temporary file left


# ---- checkpoints: plain values, weights_only, atomic writes, clear errors ----------------------


def _plain_types(value, where="checkpoint"):
    """Paths inside ``value`` holding anything but tensors, dict/list/tuple and str/int/float/bool/None."""
    if isinstance(value, (torch.Tensor, str, int, float, bool, type(None))):
        return []
    if isinstance(value, dict):
        return [
            p
            for k, v in value.items()
            for p in ([] if isinstance(k, (str, int)) else [f"{where} key {k!r}"]) + _plain_types(v, f"{where}[{k!r}]")
        ]
    if isinstance(value, (list, tuple)):
        return [p for i, v in enumerate(value) for p in _plain_types(v, f"{where}[{i}]")]
    return [f"{where}: {type(value).__name__}"]


@pytest.mark.parametrize("protocol", ["joint", "sparse"])
def test_a_checkpoint_holds_only_plain_values_and_loads_with_weights_only(tmp_path, protocol):
    from rawks_triton.training.checkpoint import load_checkpoint

    summary = train(
        tiny(tmp_path, protocol=protocol, steps=2, log_every=1, checkpoint_every=1, eval_every=100, figures=0)
    )
    payload = torch.load(summary.checkpoint, map_location="cpu", weights_only=True)
    assert _plain_types(payload) == []
    assert {"config", "step", "q", "b", "q_opt", "b_opt", "meta", "train_window"} <= set(payload)
    assert payload["step"] == 2 and payload["config"]["protocol"] == protocol
    assert (payload["b"] is None) == (protocol == "sparse")
    assert TrainConfig.from_dict(payload["config"]) == tiny(
        tmp_path, protocol=protocol, steps=2, log_every=1, checkpoint_every=1, eval_every=100, figures=0
    )
    assert load_checkpoint(summary.checkpoint)["step"] == 2


class RunsCode:
    """Unpickling this creates a file: what a hostile checkpoint could do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_checkpoint_refuses_objects_that_would_run_code(tmp_path):
    from rawks_triton.training.checkpoint import CheckpointError, load_checkpoint

    summary = train(tiny(tmp_path, steps=1, eval_every=100, figures=0))
    payload = torch.load(summary.checkpoint, weights_only=True)
    marker = tmp_path / "code-ran"
    payload["meta"]["extra"] = RunsCode(marker)
    torch.save(payload, tmp_path / "hostile.pt")
    with pytest.raises(
        CheckpointError, match=r"hostile.pt is not a usable checkpoint: it holds a Python object \(.*open\)"
    ):
        load_checkpoint(tmp_path / "hostile.pt")
    assert not marker.exists(), "loading the checkpoint ran code from it"


def test_save_checkpoint_refuses_values_that_weights_only_cannot_load(tmp_path):
    from pathlib import Path

    from rawks_triton.training.checkpoint import save_checkpoint

    with pytest.raises(
        TypeError, match=r"checkpoint\['config'\]\['out'\] is a pathlib\..*Path; a checkpoint holds only tensors"
    ):
        save_checkpoint(tmp_path / "c.pt", {"config": {"out": Path("runs")}, "q": {"w": torch.zeros(1)}})
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_writes_are_fsynced_and_atomic(tmp_path, monkeypatch):
    import os
    import stat

    from rawks_triton.training.checkpoint import save_checkpoint

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(source, target):
        events.append("replace in its folder" if os.path.dirname(source) == os.path.dirname(target) else "replace")
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 1, "q": {"w": torch.ones(3)}})
    expected = ["fsync file", "replace in its folder"] + (["fsync folder"] if hasattr(os, "O_DIRECTORY") else [])
    assert events == expected
    assert torch.load(path, weights_only=True)["step"] == 1

    def fails_midway(obj, f):
        f.write(b"PK partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", fails_midway)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"step": 2, "q": {"w": torch.ones(3)}})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # and no temporary file is left


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p: p["config"].update(bogus=1), r"its config is invalid: unknown TrainConfig field\(s\) \['bogus'\]"),
        (lambda p: p["config"].update(steps=-3), r"its config is invalid: `steps` must be >= 1, got -3"),
        (lambda p: p["config"].update(arch="huge"), r"its config is invalid: `arch` must be one of .*got 'huge'"),
        (lambda p: p["config"].update(lr="fast"), r"its config is invalid: `lr` must be a real number, got str"),
        (lambda p: p.update(step="3"), r"'step' must be an int >= 0, got '3'"),
        (lambda p: p.update(meta={}), r"'meta' must hold an int num_labels >= 1"),
        (lambda p: p.update(b=None), r"protocol 'joint' needs the boundary network 'b'"),
        (lambda p: p.pop("q_opt"), r"it lacks \['q_opt'\]"),
        (
            lambda p: p["q"].update(extra=torch.zeros(2)),
            r"its Q network 'q' does not fit the network its config describes",
        ),
    ],
    ids=[
        "unknown-field",
        "bad-steps",
        "bad-arch",
        "bad-lr-type",
        "bad-step",
        "bad-meta",
        "no-b",
        "no-q-opt",
        "wrong-q",
    ],
)
def test_a_checkpoint_with_bad_contents_is_a_clear_error(tmp_path, change, match):
    from rawks_triton.training.checkpoint import CheckpointError, load_checkpoint, networks_from_checkpoint

    summary = train(tiny(tmp_path, steps=1, eval_every=100, figures=0))
    payload = torch.load(summary.checkpoint, weights_only=True)
    change(payload)
    torch.save(payload, summary.checkpoint)
    with pytest.raises(CheckpointError, match=match):
        networks_from_checkpoint(load_checkpoint(summary.checkpoint), source=summary.checkpoint)
    with pytest.raises(CheckpointError, match=match):
        Trainer(TrainConfig(out=str(summary.out)), resume=True)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "tty"])
def test_progress_bars_show_only_on_a_terminal(monkeypatch, terminal):
    from rawks_triton.training.progress import progress_bar

    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    with progress_bar(range(3), desc="x") as bar:
        assert bar.disable is not terminal
        list(bar)
    assert ("\r" in stream.getvalue()) is terminal
    with progress_bar(range(3), enabled=False) as bar:
        assert bar.disable
    assert progress_bar(total=2, enabled=False).disable


def test_a_run_writes_no_progress_bar_to_a_log(tmp_path, monkeypatch, capfd):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    config = TrainConfig(steps=2, batch_size=2, eval_every=2, figures=0, out=str(tmp_path / "r"), progress=True)
    config.data_options = {"train_count": 2, "val_count": 1, "height": 24, "width": 24}
    train(config)
    assert "\r" not in log.getvalue() and "\r" not in capfd.readouterr().err


def test_scribble_weight_adds_the_sparse_cross_entropy_of_q(tmp_path):
    """joint loss with scribble_weight = eq. 11 + weight x (the sparse protocol's loss) on the same batch."""
    torch.manual_seed(0)
    with_ce = Trainer(tiny(tmp_path, "ce", scribble_weight=0.5, reach_weight=0.0))
    plain = Trainer(tiny(tmp_path, "plain", reach_weight=0.0, scribble_weight=0.0))
    sparse = Trainer(tiny(tmp_path, "sparse", protocol="sparse"))
    for other in (plain, sparse):  # the same networks in all three
        other.q_net.load_state_dict(with_ce.q_net.state_dict())
    plain.b_net.load_state_dict(with_ce.b_net.state_dict())
    batch = with_ce.batch(0)
    with torch.no_grad():
        total, joint, ce = (float(t.loss(batch, t.config.phase(0))) for t in (with_ce, plain, sparse))
    assert ce > 0
    assert total == pytest.approx(joint + 0.5 * ce, rel=1e-5)


# ---- threads: one on the CPU by default, restored after the run ---------------------------------


def test_training_runs_on_one_cpu_thread_by_default_and_restores_the_count(tmp_path, monkeypatch):
    from rawks_triton.training.threads import DEFAULT_CPU_THREADS, resolve_threads

    assert DEFAULT_CPU_THREADS == 1 and resolve_threads(None, "cpu") == 1 and resolve_threads(3, "cpu") == 3
    assert resolve_threads(None, "cuda") is None  # a GPU run keeps torch's choice
    seen = []
    step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda self, s: seen.append(torch.get_num_threads()) or step(self, s))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(tiny(tmp_path, "default", steps=2, eval_every=2, figures=0))
        assert seen == [1, 1] and torch.get_num_threads() == 2
        train(tiny(tmp_path, "two", steps=2, eval_every=2, figures=0, threads=2))
        assert seen[2:] == [2, 2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
