"""Side-by-side panels like the paper's Figs. 4-6: image, scribbles, boundaries, P, w, Q, truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

# Label colours (RGB in [0, 1]); label 0 is dark so that background reads as background.
PALETTE = np.array(
    [
        [0.15, 0.15, 0.15],
        [0.90, 0.30, 0.20],
        [0.20, 0.45, 0.90],
        [0.30, 0.80, 0.30],
        [0.95, 0.80, 0.20],
        [0.70, 0.35, 0.80],
        [0.20, 0.80, 0.80],
        [0.95, 0.55, 0.75],
        [0.60, 0.45, 0.25],
        [0.60, 0.60, 0.60],
        [0.50, 0.75, 0.95],
        [0.75, 0.95, 0.45],
        [0.95, 0.65, 0.35],
        [0.45, 0.30, 0.60],
        [0.30, 0.55, 0.45],
        [0.85, 0.85, 0.60],
        [0.55, 0.15, 0.25],
        [0.25, 0.25, 0.55],
        [0.80, 0.45, 0.45],
        [0.40, 0.65, 0.20],
        [0.90, 0.90, 0.90],
    ]
)


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """[H, W] labels (-1 = none, shown white) -> [H, W, 3] colours."""
    out = PALETTE[np.clip(labels, 0, None) % len(PALETTE)]
    return np.where((labels < 0)[..., None], 1.0, out)


def _image_rgb(image: torch.Tensor) -> np.ndarray:
    array = image.detach().cpu().float().numpy()
    return np.repeat(array[0][..., None], 3, axis=2) if array.shape[0] == 1 else array[:3].transpose(1, 2, 0)


def scribble_overlay(image: torch.Tensor, scribbles: torch.Tensor) -> np.ndarray:
    rgb = 0.6 * _image_rgb(image) + 0.2
    s = scribbles.cpu().numpy()
    # Thicken thin strokes for display only.
    from scipy import ndimage

    shown = s.copy()
    for label in np.unique(s[s >= 0]):
        grown = ndimage.binary_dilation(s == label, iterations=1)
        shown[grown & (shown < 0)] = label
    return np.where((shown >= 0)[..., None], colour_labels(shown), rgb)


def save_label_png(path, labels: np.ndarray) -> Path:
    """An [H, W] label map (0..255) as a palette PNG in the colours of :func:`colour_labels`."""
    from PIL import Image

    png = Image.fromarray(labels.astype(np.uint8), mode="P")
    png.putpalette((np.clip(colour_labels(np.arange(256)) * 255, 0, 255).astype(np.uint8)).reshape(-1).tolist())
    png.save(path)
    return Path(path)


def figure_rows(
    dataset, count: int, q_net=None, b_net=None, settings=None, alpha: float = 2.0, device="cpu"
) -> list[dict]:
    """The first ``count`` samples of ``dataset`` run through the networks, as rows for :func:`save_panels`.

    Volumes: ``count`` slices, evenly spaced through the first volume (propagated in 3D, shown slice by slice).
    """
    from .evaluate import predict

    if getattr(dataset, "volumetric", False):
        return _volume_rows(dataset, count, q_net, b_net, settings, alpha, device)
    rows = []
    for i in range(min(count, len(dataset))):
        sample = dataset[i]
        out = predict([sample], dataset.num_labels, q_net, b_net, settings, alpha, device)
        row = {
            "image": sample.image,
            "scribbles": sample.scribbles,
            "mask": sample.mask,
            "q_logits": out.get("q_logits", [None])[0],
        }
        if "P" in out:
            row.update(boundary=out["boundary"][0, 0], P=out["P"][0], weight=out["weight"][0])
        rows.append(row)
    return rows


def _volume_rows(dataset, count: int, q_net, b_net, settings, alpha: float, device) -> list[dict]:
    from .evaluate import predict

    if count < 1 or len(dataset) == 0:
        return []
    sample = dataset[0]
    out = predict([sample], dataset.num_labels, q_net, b_net, settings, alpha, device)
    depth = sample.scribbles.shape[0]
    rows = []
    for d in sorted({round(float(x)) for x in np.linspace(0, depth - 1, min(count, depth))}):
        row = {
            "image": sample.image[:, d],
            "scribbles": sample.scribbles[d],
            "mask": None if sample.mask is None else sample.mask[d],
            "q_logits": out["q_logits"][0][:, d] if "q_logits" in out else None,
        }
        if "P" in out:
            row.update(boundary=out["boundary"][0, 0, d], P=out["P"][0][:, d], weight=out["weight"][0][d])
        rows.append(row)
    return rows


def save_split_figures(splits, count: int, q_net, b_net, settings, alpha: float, device, path, title) -> list[Path]:
    """One PNG per split ("train", "val") of its first ``count`` samples, at ``path(split)`` titled ``title(split)``."""
    written = []
    for split, dataset in splits.items():
        rows = figure_rows(dataset, count, q_net, b_net, settings, alpha, device)
        if rows:
            written.append(save_panels(path(split), rows, title(split)))
    return written


def save_panels(path, rows: list[dict], title: str = "") -> Path:
    """Write one PNG; each row is a dict with ``image``, ``scribbles`` and any of
    ``boundary`` [H, W], ``P`` [L, H, W], ``weight`` [H, W], ``q_logits`` [L, H, W], ``mask`` [H, W]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [("image", "image"), ("scribbles", "scribbles")]
    optional = [
        ("boundary", "boundary scores B"),
        ("P", "propagated labels P"),
        ("weight", "loss weight w"),
        ("q_logits", "prediction Q"),
        ("mask", "truth"),
    ]
    columns += [(k, t) for k, t in optional if any(row.get(k) is not None for row in rows)]
    height, width = rows[0]["image"].shape[-2:]
    cell = 2.4  # inches per panel, along its width
    figsize = (len(columns) * cell, len(rows) * cell * height / width + 0.5)
    fig, axes = plt.subplots(len(rows), len(columns), figsize=figsize, squeeze=False)
    for r, row in enumerate(rows):
        for c, (key, label) in enumerate(columns):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=8)
            value = row.get(key)
            if value is None:
                ax.axis("off")
                continue
            if key == "image":
                ax.imshow(_image_rgb(value))
            elif key == "scribbles":
                ax.imshow(scribble_overlay(row["image"], value))
            elif key == "boundary":
                b = value.detach().cpu().float().numpy()
                ax.imshow(np.log10(b + 1e-5), cmap="magma", vmin=-5, vmax=max(1.0, float(np.log10(b.max() + 1e-5))))
            elif key == "P":
                p = value.detach().cpu().float()
                confidence = p.max(0).values.numpy()
                ax.imshow(colour_labels(p.argmax(0).numpy()) * confidence[..., None] + (1 - confidence[..., None]))
            elif key == "weight":
                ax.imshow(value.detach().cpu().float().numpy(), cmap="gray", vmin=0, vmax=1)
            elif key == "q_logits":
                ax.imshow(colour_labels(value.detach().cpu().argmax(0).numpy()))
            elif key == "mask":
                ax.imshow(colour_labels(value.cpu().numpy()))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
