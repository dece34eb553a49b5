"""Per-category ROC plot of a detect run (image level and pixel level), drawn with matplotlib.

``RocCollector`` is a Lightning callback that keeps the test predictions (raw scores, with each
image's path, for ``predictions.csv``); ``roc_curve`` is plain numpy; ``plot_roc`` writes the
figure; ``NormalisedVisualizer`` draws anomaly maps from raw-score runs. Pixels are subsampled (a fixed stride, so reproducible): a
ROC curve does not need millions of points and the test set's maps would not fit in memory at
full size on real datasets.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from anomalib.visualization import ImageVisualizer
from lightning.pytorch.callbacks import Callback

MAX_PIXELS_PER_IMAGE = 4096


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """False and true positive rates at every threshold, and the area under the curve."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel().astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both normal and anomalous samples")
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), labels.size - 1]  # one point per distinct score
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr, fpr = np.r_[0.0, tps / n_pos], np.r_[0.0, fps / n_neg]
    return fpr, tpr, float(np.trapezoid(tpr, fpr))


class RocCollector(Callback):
    """Keeps image scores/labels and a subsample of pixel scores/labels from ``Engine.test``."""

    def __init__(self) -> None:
        self.image_scores, self.image_labels = [], []
        self.pixel_scores, self.pixel_labels = [], []
        self.image_paths: list[str] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if outputs is None or getattr(outputs, "pred_score", None) is None:
            return
        self.image_paths += [str(p) for p in outputs.image_path]
        self.image_scores.append(outputs.pred_score.detach().float().cpu().numpy().ravel())
        self.image_labels.append(outputs.gt_label.detach().cpu().numpy().ravel())
        amap, mask = getattr(outputs, "anomaly_map", None), getattr(outputs, "gt_mask", None)
        if amap is None or mask is None:
            return
        amap = amap.detach().float().cpu().numpy().reshape(len(self.image_labels[-1]), -1)
        mask = mask.detach().cpu().numpy().reshape(amap.shape[0], -1)
        if amap.shape != mask.shape:  # map at model resolution, mask at image resolution: skip pixels
            return
        stride = max(1, amap.shape[1] // MAX_PIXELS_PER_IMAGE)
        self.pixel_scores.append(amap[:, ::stride].ravel())
        self.pixel_labels.append(mask[:, ::stride].ravel())

    def curves(self) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
        out = {}
        for level, scores, labels in (("image", self.image_scores, self.image_labels),
                                      ("pixel", self.pixel_scores, self.pixel_labels)):
            if scores:
                try:
                    out[level] = roc_curve(np.concatenate(scores), np.concatenate(labels))
                except ValueError:  # one class only (e.g. no anomalies in this category's test set)
                    pass
        return out


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, title: str) -> Path:
    """Write image- and pixel-level ROC curves into one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    for level, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, label=f"{level} AUROC {auc:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


class NormalisedVisualizer(ImageVisualizer):
    """anomalib's visualizer fed the scores and maps min-max normalised with the validation split's
    statistics, as anomalib draws them; the batch itself (and so every metric) stays raw
    (``evaluation.metrics.RawScorePostProcessor``)."""

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        shown = copy.copy(batch)
        pl_module.post_processor.normalize_batch(shown)  # anomalib's own normalisation, on the copy only
        super().on_test_batch_end(trainer, pl_module, shown, shown, batch_idx, dataloader_idx)
