"""What a checkpoint was trained on: the record ``rawks train`` writes, and what ``rawks eval`` and
``rawks propagate`` say about it.

The record (the checkpoint's ``training_data``) is plain values::

    data            the data set name (--data), e.g. "grabcut"
    data_root       the --data-root given (None for synthetic), and data_root_name, its folder's name
    data_options    the --data-option values
    description     the loader's own description, e.g. "synthetic set (seed 0)"
    num_labels, class_names, background   the label space; background: the index of the class
                    named "background", None where no class is
    in_channels, volumes                  1 (grey) or 3 (RGB); True for volumes [C, D, H, W]
    image_size      {"min": [H, W], "max": [H, W]} over both splits ([D, H, W] for volumes)
    propagation_scale                     P was trained at this fraction of the resolution
    splits          {"train": {"count", "names"}, "val": {...}} (no "val" without a held-out split)

Checkpoints written before the record existed load as before and are reported as
"training data not recorded", with what their config and meta still say.
"""

from __future__ import annotations

from pathlib import Path

RECORD_KEY = "training_data"
NOT_RECORDED = "training data not recorded"


def training_data_record(config, splits) -> dict:
    """The ``training_data`` record of a run on ``splits`` (built from ``config``)."""
    names = list(splits.class_names)
    sizes = [d.image_size(i) for _, d in splits.items() for i in range(len(d))]
    dims = len(sizes[0])
    sizes = [s for s in sizes if len(s) == dims]  # a file of another kind fails when it is loaded
    return {
        "data": config.data,
        "data_root": config.data_root,
        "data_root_name": None if config.data_root is None else Path(config.data_root).resolve().name,
        "data_options": dict(config.data_options),
        "description": splits.train.describe(),
        "num_labels": splits.num_labels,
        "class_names": names,
        "background": names.index("background") if "background" in names else None,
        "in_channels": splits.in_channels,
        "volumes": splits.volumetric,
        "image_size": {
            "min": [min(s[k] for s in sizes) for k in range(dims)],
            "max": [max(s[k] for s in sizes) for k in range(dims)],
        },
        "propagation_scale": config.propagation_scale,
        "splits": {split: {"count": len(d), "names": list(d.names)} for split, d in splits.items()},
    }


def check_record(record) -> str | None:
    """What is wrong with a ``training_data`` record, or None when it is usable."""
    if not isinstance(record, dict):
        return f"it is a {type(record).__name__}, not a dict"
    for key, kind in (("data", str), ("num_labels", int), ("class_names", list), ("splits", dict)):
        if not isinstance(record.get(key), kind) or isinstance(record.get(key), bool):
            return f"it must hold {key} ({kind.__name__}), got {record.get(key)!r}"
    if len(record["class_names"]) != record["num_labels"]:
        return f"it names {len(record['class_names'])} classes for num_labels {record['num_labels']}"
    for split, entry in record["splits"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("count"), int):
            return f"its split {split!r} must hold a count, got {entry!r}"
    return None


def _classes(names) -> str:
    return ", ".join(f"{i} {name}" for i, name in enumerate(names))


def _size(values) -> str:
    return "x".join(str(v) for v in values)


def describe(payload: dict) -> str:
    """One line: what the checkpoint ``payload`` was trained on (or that it does not say)."""
    record = payload.get(RECORD_KEY)
    config, meta = payload["config"], payload["meta"]
    if record is None:
        names = meta.get("class_names")
        classes = f" ({_classes(names)})" if isinstance(names, list) else ""
        return (
            f"{NOT_RECORDED} (a checkpoint from before rawks recorded it); its config names --data "
            f"{config.get('data')!r} and it has {meta['num_labels']} labels{classes}"
        )
    # The loaders' descriptions name the folder; say it once.
    where = f" from {record['data_root']}" if record.get("data_root") else f" ({record.get('description')})"
    background = record.get("background")
    size = record.get("image_size") or {}
    low, high = size.get("min"), size.get("max")
    shape = "" if low is None else _size(low) if low == high else f"{_size(low)} to {_size(high)}"
    kind = "volumes" if record.get("volumes") else "images"
    colour = {1: "grey ", 3: "RGB "}.get(record.get("in_channels"), "")
    counts = ", ".join(f"{entry['count']} {split}" for split, entry in record["splits"].items())
    return (
        f"trained on {record['data']}{where}: "
        f"{record['num_labels']} classes ({_classes(record['class_names'])}), background "
        f"{'label ' + str(background) if background is not None else 'not a named class'}; "
        f"{colour}{kind}{' of ' + shape if shape else ''}; {counts} {kind}"
        + (f"; options {record['data_options']}" if record.get("data_options") else "")
    )


def trained_on(payload: dict) -> tuple[str, int, list[str] | None]:
    """(data set name, label count, class names or None) of a checkpoint, recorded or from its config."""
    record = payload.get(RECORD_KEY)
    if record is not None:
        return record["data"], record["num_labels"], list(record["class_names"])
    names = payload["meta"].get("class_names")
    return payload["config"].get("data"), payload["meta"]["num_labels"], names if isinstance(names, list) else None


def label_space(payload: dict) -> str:
    """The checkpoint's labels in words, for messages: '3 classes of synthetic (0 background, ...)'."""
    data, count, names = trained_on(payload)
    return f"{count} classes of --data {data}" + (f" ({_classes(names)})" if names else "")


def label_space_notes(payload: dict, source, present: list[int], num_labels: int, image_size) -> list[str]:
    """Warnings for ``rawks propagate``: where the scribbles (labels ``present``, ``num_labels``
    labels in all, an image of ``image_size`` (H, W)) do not match the checkpoint's label space."""
    data, count, names = trained_on(payload)
    notes = []
    if data == "synthetic":
        notes.append(
            f"checkpoint {source} was trained on generated synthetic scenes (--data synthetic), not on "
            "photographs or scans: its boundaries B and its Q need not fit this image (train on data like it, "
            "or propagate without --checkpoint for the hand-made boundary)"
        )
    if num_labels != count:
        notes.append(
            f"the scribbles are propagated as {num_labels} labels, and checkpoint {source} has "
            f"{label_space(payload)}: P uses the scribbles' labels, Q (_q_labels.png) the checkpoint's classes"
        )
    unused = [label for label in range(min(count, num_labels)) if label not in present]
    if unused:
        named = [f"{label} {names[label]}" if names else str(label) for label in unused]
        notes.append(
            f"the scribbles hold labels {present}, and checkpoint {source} has {label_space(payload)}: "
            f"no scribble of {', '.join(named)}, so P gives it probability 0 (check --map)"
        )
    size = (payload.get(RECORD_KEY) or {}).get("image_size") or {}
    low, high = size.get("min"), size.get("max")
    if low is not None and len(low) == len(image_size):
        if any(image_size[k] > 2 * high[k] or 2 * image_size[k] < low[k] for k in range(len(low))):
            trained = _size(low) if low == high else f"{_size(low)} to {_size(high)}"
            notes.append(
                f"the image is {_size(image_size)}, and checkpoint {source} was trained on {data} images of "
                f"{trained}: its boundaries were learnt at another scale"
            )
    return notes


def trained_on_notes(payload: dict, data: str, splits) -> list[str]:
    """Warnings for ``rawks eval`` on ``splits`` of ``data``: evaluation images that trained the checkpoint."""
    record = payload.get(RECORD_KEY)
    if record is None or record["data"] != data or "train" not in record["splits"]:
        return []
    trained = set(record["splits"]["train"].get("names", []))
    notes = []
    for split, dataset in splits.items():
        if split == "train":
            continue
        seen = [name for name in dataset.names if name in trained]
        if seen:
            more = f" and {len(seen) - 5} more" if len(seen) > 5 else ""
            notes.append(
                f"{len(seen)} of the {len(dataset)} {split} images were training images of the checkpoint "
                f"({', '.join(seen[:5])}{more}): its {split} metrics are not held out"
            )
    return notes
