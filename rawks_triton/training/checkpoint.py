"""Checkpoints of ``rawks train``: an atomic, fsynced save and a ``weights_only`` load.

A checkpoint is a dict with the keys ``config`` (the TrainConfig as a dict), ``step``,
``q``, ``b`` (state dicts; ``b`` None without a boundary network), ``q_opt``, ``b_opt``,
``meta`` (num_labels, in_channels, class_names, world_size, volumes: trained on volumes) and, optionally,
``train_window`` (the running sums of the unfinished logging window) and ``training_data`` (what the
run was trained on, :mod:`.provenance`; checkpoints written before it existed lack it and load as before).

Checkpoints hold only tensors, dicts, lists, strings and numbers, and are read with
``torch.load(..., weights_only=True)``: a file from someone else cannot run code. A file
that is not a readable checkpoint raises :class:`CheckpointError` naming it.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path

import torch

from .config import TrainConfig
from .networks import build_boundary_net, build_segmentation_net
from .provenance import RECORD_KEY, check_record

CHECKPOINT = "checkpoint.pt"


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable, where the platform can open a folder (POSIX)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write, text: bool = False) -> None:
    """Write ``path`` through ``write(file)`` so that a reader sees the old file or the whole new one.

    The data goes to a temporary file in the same folder, is flushed and fsynced, then
    renamed over ``path`` (os.replace is atomic on one file system), and the folder is
    fsynced so that the rename survives a power cut. On an error the temporary file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w" if text else "wb", **({"newline": ""} if text else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


PLAIN = (str, int, float, bool, type(None))


def _check_plain(value, where: str = "checkpoint") -> None:
    """Raise TypeError unless ``value`` is tensors, dicts, lists, tuples, str, int, float, bool and None."""
    if isinstance(value, (torch.Tensor, *PLAIN)):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(
                    f"{where} has a key {key!r} of type {type(key).__name__}; "
                    "only str and int keys load with weights_only=True"
                )
            _check_plain(item, f"{where}[{key!r}]")
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}; a checkpoint holds only tensors, "
        "dicts, lists, tuples, str, int, float, bool and None (so that it loads with weights_only=True)"
    )


def save_checkpoint(path: Path, payload: dict) -> None:
    """torch.save ``payload`` atomically; TypeError if it holds anything weights_only=True would refuse."""
    _check_plain(payload)
    atomic_write(path, lambda f: torch.save(payload, f))


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint written by ``rawks train``; the message names it."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No file where a checkpoint was expected."""


EXPECTED = "expected a checkpoint written by `rawks train`"
# What Trainer.checkpoint writes; "train_window" and "training_data" are optional (older checkpoints lack them).
CHECKPOINT_KEYS = ("config", "step", "q", "b", "q_opt", "b_opt", "meta")


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0].split(". ")[0] if text else ""
    return f"{type(err).__name__}: {line[:200]}" if line else type(err).__name__


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    if isinstance(value, dict):
        keys = [str(k) for k in list(value)[:6]]
        return f"a dict with keys {keys}{' ...' if len(value) > 6 else ''}"
    return f"a {type(value).__name__}"


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def check_checkpoint(payload, path) -> TrainConfig:
    """The config of a loaded checkpoint; CheckpointError naming ``path`` and the first problem found."""

    def bad(problem: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a usable checkpoint: {problem} ({EXPECTED})")

    if not isinstance(payload, dict):
        raise bad(f"it holds {_describe(payload)}, not the dict of a training checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in payload]
    if missing:
        raise bad(f"it lacks {missing}; it holds {_describe(payload)}")
    try:
        config = TrainConfig.from_dict(payload["config"]).validate(check_files=False)
    except (TypeError, ValueError) as err:
        raise bad(f"its config is invalid: {err}") from None
    step = payload["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise bad(f"'step' must be an int >= 0, got {step!r}")
    meta = payload["meta"]
    for key in ("num_labels", "in_channels"):
        value = meta.get(key) if isinstance(meta, dict) else None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(f"'meta' must hold an int {key} >= 1, got {_describe(meta) if value is None else repr(value)}")
    if isinstance(meta, dict) and not isinstance(meta.get("volumes", False), bool):
        raise bad(f"'meta' volumes must be a bool (trained on volumes or not), got {meta['volumes']!r}")
    if not _is_state_dict(payload["q"]):
        raise bad(f"'q' must be a state dict (str -> tensor), got {_describe(payload['q'])}")
    if not isinstance(payload["q_opt"], dict):
        raise bad(f"'q_opt' must be an optimiser state dict, got {_describe(payload['q_opt'])}")
    if config.uses_boundaries:
        if not _is_state_dict(payload["b"]) or not isinstance(payload["b_opt"], dict):
            raise bad(
                f"protocol {config.protocol!r} needs the boundary network 'b' and its optimiser 'b_opt', "
                f"got {_describe(payload['b'])} and {_describe(payload['b_opt'])}"
            )
    elif payload["b"] is not None:
        raise bad(f"protocol {config.protocol!r} has no boundary network, but 'b' holds {_describe(payload['b'])}")
    window = payload.get("train_window")
    if window is not None:
        ok = (
            isinstance(window, dict)
            and isinstance(window.get("steps"), int)
            and window["steps"] >= 0
            and all(
                isinstance(window.get(k), (int, float)) and math.isfinite(window[k]) for k in ("loss_sum", "seconds")
            )
        )
        if not ok:
            raise bad(f"'train_window' must hold loss_sum, steps and seconds, got {window!r}")
    record = payload.get(RECORD_KEY)
    problem = None if record is None else check_record(record)
    if problem is None and record is not None and record["num_labels"] != meta["num_labels"]:
        problem = f"it has {record['num_labels']} labels and 'meta' {meta['num_labels']}"
    if problem is not None:
        raise bad(f"its {RECORD_KEY!r} record is malformed: {problem}")
    return config


def _load_problem(err: Exception) -> str:
    """What a torch.load error means, in one line."""
    if isinstance(err, PermissionError):
        return f"it cannot be opened ({_first_line(err)})"
    text = str(err)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (
            f"it holds a Python object ({refused.group(1)}) besides tensors, containers and numbers, which is "
            "not loaded because loading it could run code from the file"
        )
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    reason = f"{type(err).__name__}: {detail.group(1)[:200]}" if detail else _first_line(err)
    return f"it cannot be read, the file is truncated, corrupt or not a torch.save file ({reason})"


def load_checkpoint(path) -> dict:
    """The payload of a checkpoint written by ``rawks train``, read with ``weights_only=True``.

    Raises :class:`CheckpointNotFoundError` for a missing file and :class:`CheckpointError`
    for anything else that is not a readable, well-formed checkpoint (truncated, corrupt,
    another kind of torch file, objects that only an unsafe load would build, an invalid
    config); the message names the path and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        found = "a folder" if path.is_dir() else "nothing"
        raise CheckpointNotFoundError(f"no checkpoint at {path}: {EXPECTED}, found {found}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on the pickle protocol of a foreign file
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every reader error means the same to the user
        raise CheckpointError(f"{path} is not a usable checkpoint: {_load_problem(err)} ({EXPECTED})") from None
    check_checkpoint(payload, path)
    return payload


def load_state(target, state, what: str, source) -> None:
    try:
        target.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"{source}: its {what} does not fit the network its config describes ({_first_line(err)})"
        ) from None


def networks_from_checkpoint(payload: dict, device="cpu", source="the checkpoint"):
    """(config, Q, B or None, meta) rebuilt from a checkpoint, in eval mode.

    ``source`` names the checkpoint in errors (e.g. its path).
    """
    config = check_checkpoint(payload, source)
    meta = payload["meta"]
    # meta["volumes"]: trained on volumes, with the networks config.volume_net (absent before volumes existed).
    volume_net = config.volume_net if meta.get("volumes", False) else None
    q_net = build_segmentation_net(
        config.arch, meta["in_channels"], meta["num_labels"], config.q_width, volume_net=volume_net
    )
    load_state(q_net, payload["q"], "Q network 'q'", source)
    b_net = None
    if payload.get("b") is not None:
        b_net = build_boundary_net(
            config.arch, meta["in_channels"], config.b_width, initial_logit=config.initial_logit, volume_net=volume_net
        )
        load_state(b_net, payload["b"], "boundary network 'b'", source)
        b_net.to(device).eval()
    return config, q_net.to(device).eval(), b_net, meta
