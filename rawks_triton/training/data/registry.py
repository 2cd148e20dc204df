"""The data sets the trainer knows, by name, and the options each one takes.

This is the one list of data set names: :class:`~rawks_triton.training.config.TrainConfig`,
:func:`~rawks_triton.training.splits.build_splits`, the ``rawks`` command and the
scikit-image baseline all read it.

Options per data set (``data_options`` of TrainConfig, ``--data-option key=value`` on
the command line):

* ``synthetic``: ``train_count`` (64), ``val_count`` (32), ``height`` (96), ``width``
  (128), ``num_labels`` (3), ``cue`` ("texture" or "shape"), ``data_seed`` (0; the
  held-out set uses data_seed + 1).
* ``folder``: ``train_split`` / ``val_split`` (names of ``splits/*.txt``; default
  "train"/"val" when those files exist, otherwise every image trains and nothing is held
  out), ``unlabelled`` (255), ``ignore`` (255), ``channels`` (3), ``num_labels``.
* ``grabcut``: ``scribble_set`` ("scribbles-set-1"), ``holdout`` (names joined by "+"),
  or ``holdout_count`` (k: every (30/k)-th image in name order; default 10).
* ``acdc``: ``val_patients`` ("patient005"; several joined by "+").
* ``acdc-volumes``: ``val_patients`` (as ``acdc``: the same patients are held out),
  ``downsample`` (1; k > 1 reduces every slice by k in-plane).
* ``scribblesup``: ``layout`` ("auto"), ``train_split`` ("train"), ``val_split`` ("val";
  in the flat layout: none), ``stroke_width`` (3), ``scribble_dir`` ("pascal_2012").
"""

from __future__ import annotations

# name -> the option names it accepts
DATA_OPTIONS = {
    "synthetic": frozenset({"train_count", "val_count", "height", "width", "num_labels", "data_seed", "cue"}),
    "folder": frozenset({"train_split", "val_split", "unlabelled", "ignore", "channels", "num_labels"}),
    "grabcut": frozenset({"scribble_set", "holdout", "holdout_count"}),
    "acdc": frozenset({"val_patients"}),
    "acdc-volumes": frozenset({"val_patients", "downsample"}),
    "scribblesup": frozenset({"layout", "train_split", "val_split", "stroke_width", "scribble_dir"}),
}
DATASETS = tuple(DATA_OPTIONS)
# Options that are integers; given as strings (the command line), they are converted.
INT_OPTIONS = frozenset(
    {"train_count", "val_count", "height", "width", "num_labels", "data_seed", "unlabelled", "ignore", "channels"}
    | {"holdout_count", "stroke_width", "downsample"}
)


def parse_options(data: str, options: dict) -> dict:
    """Check option names and convert integer options given as strings."""
    if data not in DATASETS:
        raise ValueError(f"`data` must be one of {list(DATASETS)}, got {data!r}")
    unknown = set(options) - DATA_OPTIONS[data]
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)} for data={data!r}; known: {sorted(DATA_OPTIONS[data])}")
    parsed = {}
    for key, value in options.items():
        if key in INT_OPTIONS and isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ValueError(f"data option {key!r} must be an integer, got {value!r}") from None
        parsed[key] = value
    return parsed


def parse_option_pairs(pairs) -> dict:
    """["key=value", ...] (``--data-option``, repeatable) -> {key: value}, values still strings."""
    options = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--data-option expects KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        options[key.strip()] = value.strip()
    return options
