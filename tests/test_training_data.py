"""Loaders: the generic folder format, GrabCut, ACDC, ScribbleSup, the synthetic set, the splits."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rawks_triton.training.data import (
    ACDCDataset,
    DataFolderError,
    FolderDataset,
    GrabCutDataset,
    ScribbleSupDataset,
    parse_scribble_text,
    parse_scribble_xml,
    rasterise_strokes,
)
from rawks_triton.training.splits import build_splits
from rawks_triton.training.synthetic import SyntheticDataset, synthetic_scene

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _png(path: Path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode=mode).save(path)


def make_folder(root: Path, unlabelled=255, names=("a", "b"), h=7, w=13, masks=True):
    rng = np.random.default_rng(0)
    for name in names:
        _png(root / "images" / f"{name}.png", rng.integers(0, 255, (h, w, 3)))
        scribbles = np.full((h, w), unlabelled)
        scribbles[1, 1:5] = 0
        scribbles[5, 6:12] = 2
        _png(root / "scribbles" / f"{name}.png", scribbles)
        if masks:
            mask = np.zeros((h, w))
            mask[4:, 6:] = 2
            mask[0, 0] = 255
            _png(root / "masks" / f"{name}.png", mask)
    return root


def test_folder_dataset_reads_images_scribbles_masks_and_splits(tmp_path):
    root = make_folder(tmp_path / "set", unlabelled=7)
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("a\n# a comment\n\n")
    data = FolderDataset(root, unlabelled=7)
    assert data.names == ["a", "b"] and data.num_labels == 3 and data.has_masks
    s = data[0]
    assert s.image.shape == (3, 7, 13) and s.image.dtype == torch.float32
    assert 0 <= float(s.image.min()) and float(s.image.max()) <= 1
    assert s.scribbles.dtype == torch.int64 and s.scribbles.shape == (7, 13)
    assert int((s.scribbles == 0).sum()) == 4 and int((s.scribbles == 2).sum()) == 6
    assert int((s.scribbles == -1).sum()) == 7 * 13 - 10
    assert int(s.mask[0, 0]) == -1 and int(s.mask[6, 12]) == 2
    assert FolderDataset(root, "train", unlabelled=7).names == ["a"]
    splits = build_splits("folder", str(root), {"unlabelled": "7"})
    assert len(splits.train) == 1 and splits.val is None


def test_folder_dataset_errors_name_the_path(tmp_path):
    with pytest.raises(DataFolderError, match=r"expected a folder at .*nowhere, found nothing"):
        FolderDataset(tmp_path / "nowhere")
    root = make_folder(tmp_path / "set")
    (root / "images" / "b.png").unlink()
    with pytest.raises(DataFolderError, match=r"no image for 'b' in .*images"):
        FolderDataset(root)[1]
    root = make_folder(tmp_path / "bad")
    _png(root / "scribbles" / "a.png", np.full((5, 5), 255))
    with pytest.raises(DataFolderError, match=r"scribble map .*a.png of 'a' is 5x5, expected the image size 7x13"):
        FolderDataset(root, num_labels=3)[0]
    root = make_folder(tmp_path / "range")
    with pytest.raises(DataFolderError, match=r"values \[2\] outside \[0, 2\)"):
        FolderDataset(root, num_labels=2)[0]
    with pytest.raises(DataFolderError, match=r"split list: expected a file at .*val.txt"):
        FolderDataset(root, "val")


def make_grabcut(root: Path, names=("x1", "x2"), h=9, w=11):
    rng = np.random.default_rng(1)
    for i, name in enumerate(names):
        _png(root / "images" / f"{name}.{'jpg' if i else 'bmp'}", rng.integers(0, 255, (h, w, 3)))
        truth = np.zeros((h, w))
        truth[3:7, 3:8] = 255
        truth[3, 3:8] = 128
        _png(root / "ground-truth" / f"{name}.png", truth)
        anno = np.zeros((h, w))
        anno[5, 4:7] = 1
        anno[0, :] = 2
        _png(root / "scribbles-set-1" / f"{name}-anno.png", anno)
    return root


def test_grabcut_layout(tmp_path):
    root = make_grabcut(tmp_path / "grabcut")
    data = GrabCutDataset(root)
    assert data.names == ["x1", "x2"] and data.num_labels == 2
    s = data[1]
    assert s.image.shape == (3, 9, 11)
    assert torch.equal(s.scribbles[5, 4:7], torch.ones(3, dtype=torch.int64))  # 1 = foreground
    assert torch.equal(s.scribbles[0], torch.zeros(11, dtype=torch.int64))  # 2 = background -> 0
    assert int(s.mask[3, 4]) == -1 and int(s.mask[5, 5]) == 1 and int(s.mask[0, 0]) == 0
    splits = build_splits("grabcut", str(root), {"holdout": "x2"})
    assert splits.train.names == ["x1"] and splits.val.names == ["x2"]
    with pytest.raises(DataFolderError, match=r"GrabCut scribbles: expected a folder at .*scribbles-set-9"):
        GrabCutDataset(root, "scribbles-set-9")


def make_acdc(root: Path, count=2, h=12, w=10):
    h5py = pytest.importorskip("h5py")
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        with h5py.File(root / f"patient00{i + 1}_frame01_slice_0.h5", "w") as f:
            image = np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)
            image[4:8, 3:7] = 1.0 - image[4:8, 3:7]
            f["image"] = image
            label = np.zeros((h, w), dtype=np.uint8)
            label[4:8, 3:7] = 3
            f["label"] = label
            scribble = np.full((h, w), 4, dtype=np.uint16)
            scribble[5, 4:6] = 3
            scribble[0, :] = 0
            f["scribble"] = scribble
    return root


def test_acdc_slices(tmp_path):
    root = make_acdc(tmp_path / "acdc")
    data = ACDCDataset(root)
    assert data.num_labels == 4 and data.in_channels == 1 and len(data) == 2
    s = data[0]
    assert s.image.shape == (1, 12, 10)
    assert int((s.scribbles == -1).sum()) == 120 - 12 and int(s.scribbles[5, 4]) == 3
    assert int(s.mask[5, 4]) == 3
    splits = build_splits("acdc", str(root), {"val_patients": "patient002"})
    assert splits.train.names == ["patient001_frame01_slice_0"] and splits.val.names == ["patient002_frame01_slice_0"]
    import h5py

    with h5py.File(root / "patient009_frame01_slice_0.h5", "w") as f:
        f["image"] = np.zeros((3, 3), dtype=np.float32)
    with pytest.raises(DataFolderError, match=r"has no dataset 'label'"):
        ACDCDataset(root, names=["patient009_frame01_slice_0"])[0]


def test_scribble_text_and_xml_formats(tmp_path):
    strokes = parse_scribble_text("15,1,1,5,1\n\n0,0,6,8,6\nperson,3,3\n")
    assert strokes[0] == (15, [(1.0, 1.0), (5.0, 1.0)])
    assert strokes[2][0] == 15  # class names map to VOC indices
    with pytest.raises(DataFolderError, match=r"line 1: expected 'class,x1,y1,x2,y2,...'"):
        parse_scribble_text("3,1,2,3")
    with pytest.raises(DataFolderError, match=r"unknown class 'unicorn'"):
        parse_scribble_text("unicorn,1,2")
    xml = tmp_path / "s.xml"
    xml.write_text(
        "<annotation><filename>s.jpg</filename><size><width>10</width><height>8</height></size>"
        "<polygon><tag>cat</tag><point><X>1</X><Y>2</Y></point><point><X>7</X><Y>2</Y></point></polygon>"
        "<polygon><tag>background</tag><point><X>0</X><Y>7</Y></point><point><X>9</X><Y>7</Y></point></polygon>"
        "</annotation>"
    )
    parsed = parse_scribble_xml(xml)
    assert parsed == [(8, [(1.0, 2.0), (7.0, 2.0)]), (0, [(0.0, 7.0), (9.0, 7.0)])]
    thin = rasterise_strokes(parsed, 8, 10, stroke_width=1)
    assert thin[2, 1:8].tolist() == [8] * 7 and int((thin == 8).sum()) == 7 and int((thin == 0).sum()) == 10
    wide = rasterise_strokes(parsed, 8, 10, stroke_width=3)
    assert int((wide == 8).sum()) > 7 and bool((wide[1:4, 3] == 8).all())
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><polygon>")
    with pytest.raises(DataFolderError, match=r"malformed"):
        parse_scribble_xml(bad)


def make_scribblesup_flat(root: Path, h=8, w=10):
    """Two images: one with polyline scribbles (.txt), one with ScribbleSup XML; both with VOC masks."""
    rng = np.random.default_rng(2)
    gt = np.zeros((h, w))
    gt[3:6, 1 : w - 1] = 12
    gt[h - 1, :] = 255
    for name in ("im1", "im2"):
        _png(root / f"{name}.jpg", rng.integers(0, 255, (h, w, 3)))
        _png(root / f"{name}_gt.png", gt)
    (root / "im1_scribble.txt").write_text(f"0,0,0,{w - 1},0\n12,2,4,{w - 3},4\n")
    (root / "im2.xml").write_text(
        "<annotation><polygon><tag>dog</tag><point><X>2</X><Y>4</Y></point>"
        f"<point><X>{w - 3}</X><Y>4</Y></point></polygon>"
        "<polygon><tag>background</tag><point><X>0</X><Y>0</Y></point>"
        f"<point><X>{w - 1}</X><Y>0</Y></point></polygon></annotation>"
    )
    return root


def test_scribblesup_flat_and_voc_layouts(tmp_path):
    both = ScribbleSupDataset(make_scribblesup_flat(tmp_path / "both"), stroke_width=1)
    assert both.names == ["im1", "im2"]
    assert torch.equal(both[0].scribbles, both[1].scribbles)  # the same strokes, as text and as XML
    flat = tmp_path / "flat"
    _png(flat / "im1.jpg", np.zeros((8, 10, 3)))
    (flat / "im1_scribble.txt").write_text("0,0,0,9,0\n12,2,4,7,4\n")
    gt = np.zeros((8, 10))
    gt[3:6, 1:9] = 12
    gt[7, :] = 255
    _png(flat / "im1_gt.png", gt)
    data = ScribbleSupDataset(flat, stroke_width=1)
    s = data[0]
    assert data.num_labels == 21 and s.scribbles.shape == (8, 10)
    assert int((s.scribbles == 12).sum()) == 6 and int(s.mask[7, 0]) == -1 and int(s.mask[4, 4]) == 12
    voc = tmp_path / "voc"
    _png(voc / "JPEGImages" / "im2.jpg", np.zeros((8, 10, 3)))
    (voc / "pascal_2012").mkdir()
    (voc / "pascal_2012" / "im2.xml").write_text(
        "<annotation><polygon><tag>dog</tag><point><X>2</X><Y>2</Y></point><point><X>6</X><Y>2</Y></point></polygon></annotation>"
    )
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("im2\n")
    splits = build_splits("scribblesup", str(voc), {"val_split": "", "stroke_width": "1"})
    s = splits.train[0]
    assert s.mask is None and int((s.scribbles == 12).sum()) == 5


def test_synthetic_set_is_deterministic_and_consistent():
    a, b = SyntheticDataset(3, seed=5), SyntheticDataset(3, seed=5)
    for i in range(3):
        assert torch.equal(a[i].image, b[i].image) and torch.equal(a[i].scribbles, b[i].scribbles)
    assert not torch.equal(SyntheticDataset(1, seed=6)[0].image, a[0].image)
    for cue in ("texture", "shape"):
        for index in range(6):
            image, truth, scribbles = synthetic_scene(0, index, 40, 56, 3, cue)
            assert image.shape == (3, 40, 56) and image.dtype == np.float32
            assert 0 <= image.min() and image.max() <= 1
            labelled = scribbles >= 0
            assert labelled.any()
            # every scribbled pixel carries the label of the truth under it
            assert np.array_equal(scribbles[labelled], truth[labelled])
    with pytest.raises(ValueError, match=r"`num_labels` must be an int in \[2, 4\] for cue='shape', got 5"):
        SyntheticDataset(2, num_labels=5, cue="shape")


def test_split_options_are_checked():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\] for data='synthetic'"):
        build_splits("synthetic", None, {"colour": "red"})
    with pytest.raises(ValueError, match=r"`data_root` is required for data='grabcut'"):
        build_splits("grabcut", None)
    with pytest.raises(DataFolderError, match=r"data_root .*missing does not exist"):
        build_splits("acdc", "/nonexistent/missing")


@pytest.mark.skipif(not (SHARED / "grabcut").is_dir(), reason="../shared/data/grabcut is not present")
def test_real_grabcut_scribbles_agree_with_truth():
    data = GrabCutDataset(SHARED / "grabcut")
    assert len(data) == 30
    for i in (0, 7):
        s = data[i]
        both = (s.scribbles >= 0) & (s.mask >= 0)
        assert float((s.scribbles[both] == s.mask[both]).float().mean()) > 0.99


@pytest.mark.skipif(not (SHARED / "acdc").is_dir(), reason="../shared/data/acdc is not present")
def test_real_acdc_scribbles_agree_with_truth():
    pytest.importorskip("h5py")
    data = ACDCDataset(SHARED / "acdc")
    s = data[3]
    both = s.scribbles >= 0
    assert s.image.shape[0] == 1 and float((s.scribbles[both] == s.mask[both]).float().mean()) > 0.95


@pytest.mark.skipif(not (SHARED / "voc-scribblesup").is_dir(), reason="../shared/data/voc-scribblesup is not present")
def test_real_scribblesup_scribbles_agree_with_truth():
    data = ScribbleSupDataset(SHARED / "voc-scribblesup")
    for i in range(len(data)):
        s = data[i]
        both = (s.scribbles >= 0) & (s.mask >= 0)
        assert float((s.scribbles[both] == s.mask[both]).float().mean()) > 0.9
