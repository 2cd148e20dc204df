"""Scribble-annotated datasets: one sample = image, sparse scribbles, optional dense truth.

Every loader returns :class:`Sample` objects with one convention, whatever the format
on disk (:mod:`.common`):

* ``image``: [C, H, W] float32 in [0, 1];
* ``scribbles``: [H, W] int64, a label in [0, num_labels) or ``UNLABELLED`` (-1);
* ``mask``: [H, W] int64 dense truth, a label or ``IGNORE`` (-1) (None without truth).

Loaders, one module per format: :class:`FolderDataset` (:mod:`.folder`, the generic
format), :class:`GrabCutDataset` (:mod:`.grabcut`), :class:`ACDCDataset` (:mod:`.acdc`,
HDF5 slices), :class:`ACDCVolumeDataset` (:mod:`.acdc_volumes`, HDF5 volumes: samples
carry [C, D, H, W] images and [D, H, W] scribbles and masks), :class:`ScribbleSupDataset`
(:mod:`.scribblesup`, PASCAL VOC with ScribbleSup polylines or XML) and, in
:mod:`rawks_triton.training.synthetic`, the generated default. :mod:`.registry` names
them and their options. A missing or malformed folder raises :class:`DataFolderError`
naming the path and what was expected.
"""

from .acdc import ACDCDataset
from .acdc_volumes import ACDCVolumeDataset
from .common import (
    IGNORE,
    IMAGE_SUFFIXES,
    UNLABELLED,
    DataFolderError,
    Sample,
    ScribbleDataset,
    read_image,
    read_label_png,
    read_split,
)
from .folder import FolderDataset
from .grabcut import GrabCutDataset
from .registry import DATA_OPTIONS, DATASETS, parse_option_pairs, parse_options
from .scribblesup import VOC_CLASSES, ScribbleSupDataset, parse_scribble_text, parse_scribble_xml, rasterise_strokes

__all__ = [
    "ACDCDataset",
    "ACDCVolumeDataset",
    "DATASETS",
    "DATA_OPTIONS",
    "IGNORE",
    "IMAGE_SUFFIXES",
    "UNLABELLED",
    "VOC_CLASSES",
    "DataFolderError",
    "FolderDataset",
    "GrabCutDataset",
    "Sample",
    "ScribbleDataset",
    "ScribbleSupDataset",
    "parse_option_pairs",
    "parse_options",
    "parse_scribble_text",
    "parse_scribble_xml",
    "rasterise_strokes",
    "read_image",
    "read_label_png",
    "read_split",
]
