"""The study's metrics (anomalib implementations) and how results are shown."""

from __future__ import annotations

from collections.abc import Mapping

from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score

HEADLINE = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


# Computed on the validation split (training normals + synthetic anomalies, never the test set);
# trained detectors select their checkpoint on one of these (``detector.selection.monitor``).
VALIDATION = ("val_image_AUROC", "val_pixel_AUROC")


def study_evaluator(aupro_fpr_limit: float = 0.3, pixel: bool = True) -> Evaluator:
    """Test: image AUROC and F1, pixel AUROC, AUPRO integrated up to ``aupro_fpr_limit`` FPR.

    Validation: image and pixel AUROC, for checkpoint selection. The F1 threshold itself is the
    post-processor's adaptive threshold, also fitted on the validation split.
    ``pixel=False`` (a test set without masks): the test pixel metrics are left out, not reported;
    validation keeps them, as its synthetic anomalies always come with masks.
    """
    pixel_metrics = [
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=aupro_fpr_limit),
    ] if pixel else []
    return Evaluator(val_metrics=[
        AUROC(fields=["pred_score", "gt_label"], prefix="val_image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="val_pixel_", strict=False),
    ], test_metrics=[
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        *pixel_metrics,
    ])


def format_table(rows: list[Mapping], columns: tuple[str, ...] = HEADLINE,
                 keys: tuple[str, ...] = ("backbone", "detector", "category")) -> str:
    """A plain-text table, one row per result, for the end of a run."""
    header = [*keys, *columns]
    cells = [[str(r.get(k, "")) for k in keys] + [f"{r[c]:.3f}" if c in r else "-" for c in columns]
             for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(out)
