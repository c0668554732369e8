"""Zero-shot segmentation metrics: mIoU over all, seen and unseen classes, their harmonic mean, pixel accuracy."""

import datasets
import evaluate
import numpy as np


_DESCRIPTION = """
Intersection over union per class, accumulated over the whole dataset (a class's IoU is its total intersection over
its total union), then averaged over the classes that appear in the references or the predictions: over all classes
(mIoU), over the classes seen in training (mIoU seen) and over the others (mIoU unseen); hIoU is the harmonic mean of
the last two. Pixel accuracy is the fraction of labelled pixels predicted right. Pixels labelled `ignore_index` count
nowhere. All values are fractions in [0, 1]; a class that appears nowhere has IoU NaN and is left out of the means.
"""

_KWARGS_DESCRIPTION = """
Two configurations:
- "maps" (default): `predictions` and `references`, one 2D array of class ids per image.
- "areas": per image, `area_intersect`, `area_prediction` and `area_label`, each a list of `num_labels` pixel counts
  (see `class_areas`); use it to gather small statistics instead of whole maps across processes.
Args:
    num_labels (`int`): the number of classes.
    ignore_index (`int`, defaults to 255): the label of pixels without a class ("maps" only).
    seen_class_ids (`list[int]`, *optional*): the classes seen in training; without them, mIoU seen equals mIoU and
        mIoU unseen and hIoU are None.
Returns:
    `mean_iou`, `mean_iou_seen`, `mean_iou_unseen`, `harmonic_iou`, `pixel_accuracy`, `per_category_iou`.
Example:
    >>> metric = evaluate.load("cascade_clip_hf/metrics/zero_shot_miou")
    >>> results = metric.compute(predictions=[[[0, 1]]], references=[[[0, 0]]], num_labels=2, seen_class_ids=[0])
    >>> results["mean_iou_seen"]
    0.5
"""


def class_areas(prediction: np.ndarray, reference: np.ndarray, num_labels: int, ignore_index: int = 255) -> np.ndarray:
    """
    Per-class pixel counts of one image: intersection, prediction and label area over the labelled pixels.

    Returns:
        `np.ndarray` of shape `(3, num_labels)`.
    """
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"A prediction of shape {prediction.shape} does not match its reference {reference.shape}.")
    labelled = reference != ignore_index
    prediction, reference = prediction[labelled].astype(np.int64), reference[labelled].astype(np.int64)
    if reference.size and (reference.min() < 0 or reference.max() >= num_labels):
        raise ValueError(f"References hold class ids outside 0..{num_labels - 1} besides ignore_index.")
    intersect = np.bincount(reference[prediction == reference], minlength=num_labels)
    predicted = np.bincount(prediction[(prediction >= 0) & (prediction < num_labels)], minlength=num_labels)
    labelled_area = np.bincount(reference, minlength=num_labels)
    return np.stack([intersect, predicted, labelled_area])[:, :num_labels]


def nan_mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


class ZeroShotMeanIoU(evaluate.Metric):
    def _info(self):
        counts = datasets.Sequence(datasets.Value("int64"))
        if self.config_name == "areas":
            features = datasets.Features({"area_intersect": counts, "area_prediction": counts, "area_label": counts})
        else:
            label_map = datasets.Sequence(datasets.Sequence(datasets.Value("int64")))
            features = datasets.Features({"predictions": label_map, "references": label_map})
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS_DESCRIPTION, features=features
        )

    @staticmethod
    def class_areas(prediction, reference, num_labels, ignore_index=255) -> np.ndarray:
        """See the module's `class_areas`."""
        return class_areas(prediction, reference, num_labels, ignore_index)

    def _compute(
        self,
        predictions=None,
        references=None,
        area_intersect=None,
        area_prediction=None,
        area_label=None,
        num_labels=None,
        ignore_index=255,
        seen_class_ids=None,
    ):
        if num_labels is None:
            raise ValueError("num_labels is required.")
        if predictions is not None:
            areas = sum(
                (
                    class_areas(prediction, reference, num_labels, ignore_index)
                    for prediction, reference in zip(predictions, references, strict=True)
                ),
                np.zeros((3, num_labels), dtype=np.int64),
            )
        else:
            areas = np.stack([np.sum(area_intersect, 0), np.sum(area_prediction, 0), np.sum(area_label, 0)])
        intersect, predicted, labelled = areas.astype(np.float64)
        union = predicted + labelled - intersect
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = intersect / union
        seen = np.zeros(num_labels, dtype=bool)
        if seen_class_ids is not None:
            seen[list(seen_class_ids)] = True
        mean_iou_seen = nan_mean(iou[seen]) if seen_class_ids is not None else nan_mean(iou)
        mean_iou_unseen = nan_mean(iou[~seen]) if seen_class_ids is not None else None
        harmonic = None
        if mean_iou_seen is not None and mean_iou_unseen is not None and mean_iou_seen + mean_iou_unseen > 0:
            harmonic = 2 * mean_iou_seen * mean_iou_unseen / (mean_iou_seen + mean_iou_unseen)
        total_labelled = labelled.sum()
        return {
            "mean_iou": nan_mean(iou),
            "mean_iou_seen": mean_iou_seen,
            "mean_iou_unseen": mean_iou_unseen,
            "harmonic_iou": harmonic,
            "pixel_accuracy": float(intersect.sum() / total_labelled) if total_labelled else None,
            "per_category_iou": iou.tolist(),
        }
