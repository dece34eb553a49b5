"""The study's metrics (anomalib implementations) and how results are shown."""

from __future__ import annotations

from collections.abc import Mapping

from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score

HEADLINE = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


def study_evaluator(aupro_fpr_limit: float = 0.3) -> Evaluator:
    """Image AUROC and F1, pixel AUROC, and AUPRO integrated up to ``aupro_fpr_limit`` FPR."""
    return Evaluator(test_metrics=[
        AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=aupro_fpr_limit),
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
