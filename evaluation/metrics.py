"""The study's metrics (anomalib implementations) and how results are shown."""

from __future__ import annotations


from anomalib.metrics import AUPRO, AUROC, Evaluator, F1Score
from anomalib.post_processing import PostProcessor

HEADLINE = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO")


# Computed on the validation split (training normals + synthetic anomalies, never the test set);
# trained detectors select their checkpoint on one of these (``detector.selection.monitor``).
VALIDATION = ("val_image_AUROC", "val_pixel_AUROC")


class RawScorePostProcessor(PostProcessor):
    """anomalib's post-processor without the score normalisation at test time.

    anomalib's ``PostProcessor`` min-max normalises test scores and maps with the validation
    split's min, max and threshold and clamps them to [0, 1] before the ``Evaluator`` runs: every
    score outside the validation range then ties at 0 or 1, and ties change AUROC and AUPRO
    (weaker backbones have narrower validation ranges, so they lose more). Here the scores and
    maps stay raw; only ``pred_label``/``pred_mask`` are set, with the thresholds anomalib fitted
    on the validation split (adaptive F1, unchanged). ``raw > threshold`` is exactly
    ``normalised > 0.5``, anomalib's own rule at its default sensitivity (0.5; other sensitivities
    are not used here), so F1 is unchanged too.
    The normalisation statistics are still fitted: ``evaluation.plots.NormalisedVisualizer``
    uses them to draw the maps, and ``forward`` (deployment, outside ``Engine.test``) keeps
    anomalib's normalised output.
    Checkpoints keep the thresholds and statistics (buffers) and the settings (anomalib's
    ``checkpoint_config``), not the class: ``Engine.test(ckpt_path=...)`` on a model built with this
    post-processor scores raw, but ``Model.load_from_checkpoint`` builds anomalib's normalising
    default unless given ``post_processor=RawScorePostProcessor()`` (tests/test_checkpoint_reload.py).
    """

    def post_process_batch(self, batch) -> None:
        if not self.enable_thresholding:
            return
        if batch.pred_label is None:
            batch.pred_label = self._apply_threshold(batch.pred_score, self.image_threshold)
        if batch.pred_mask is None:
            batch.pred_mask = self._apply_threshold(batch.anomaly_map, self.pixel_threshold)


def raw_auroc(**kwargs) -> AUROC:
    """anomalib's AUROC for unbounded scores. torchmetrics treats any batch of scores outside [0, 1] as
    logits and applies a sigmoid, which in float32 saturates to exactly 1.0 above ~17: raw PatchCore
    distances (17-45 on the built-in data) would all tie and score 0.5."""
    return AUROC(normalization=None, **kwargs)


def study_evaluator(aupro_fpr_limit: float = 0.3, pixel: bool = True, maps: bool = True) -> Evaluator:
    """Test: image AUROC and F1, pixel AUROC, AUPRO integrated up to ``aupro_fpr_limit`` FPR.

    Validation: image and pixel AUROC, for checkpoint selection. The F1 threshold itself is the
    post-processor's adaptive threshold, also fitted on the validation split. Use it with
    ``RawScorePostProcessor`` so that the threshold-free metrics see raw scores and maps.
    ``pixel=False`` (a test set without masks): the test pixel metrics are left out, not reported;
    validation keeps them, as its synthetic anomalies always come with masks. ``maps=False`` (a
    detector that scores images only, DFKDE): no pixel metric anywhere, rather than metrics that are
    computed without ever being updated.
    """
    pixel_metrics = [
        raw_auroc(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False),
        AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", strict=False, fpr_limit=aupro_fpr_limit),
    ] if pixel and maps else []
    return Evaluator(val_metrics=[
        raw_auroc(fields=["pred_score", "gt_label"], prefix="val_image_"),
        *([raw_auroc(fields=["anomaly_map", "gt_mask"], prefix="val_pixel_", strict=False)] if maps else []),
    ], test_metrics=[
        raw_auroc(fields=["pred_score", "gt_label"], prefix="image_"),
        F1Score(fields=["pred_label", "gt_label"], prefix="image_"),
        *pixel_metrics,
    ])
