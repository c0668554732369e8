"""Calibrated class scores: the original's upsampling of mask logits and its seen-class score shift.

The model (loss, sliding window), the image processor's post-processing and the fixture parity check all turn mask
logits into per-pixel scores here, so that every path upsamples the same way.
"""

import torch
import torch.nn.functional as F


def upsample_mask_logits(logits: torch.Tensor, size: tuple[int, int], mask_size: int | None = None) -> torch.Tensor:
    """
    Upsamples patch-grid mask logits bilinearly the original's way: first to `mask_size` x `mask_size` (the model's
    `image_size`, where the original's head puts every mask), then to `size`.

    Args:
        logits (`torch.Tensor` of shape `(batch_size, num_classes, grid_height, grid_width)`).
        size (`tuple[int, int]`): the `(height, width)` of the result.
        mask_size (`int`, *optional*): the intermediate square size; straight to `size` when not known.

    Returns:
        `torch.Tensor` of shape `(batch_size, num_classes, *size)`.
    """
    if mask_size is not None and tuple(logits.shape[-2:]) != (mask_size, mask_size):
        logits = F.interpolate(logits, size=(mask_size, mask_size), mode="bilinear", align_corners=False)
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return logits


def seen_score_shift(
    seen_class_mask: torch.Tensor, setting: str, shift: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """
    What calibration subtracts from each class's sigmoid score: `shift` for the seen classes of an inductive model,
    0 otherwise (the original lowers seen classes so that unseen ones can win where they compete).

    Args:
        seen_class_mask (`torch.BoolTensor` of shape `(num_classes,)`).

    Returns:
        `torch.Tensor` of shape `(num_classes,)`.
    """
    return seen_class_mask.to(dtype) * (shift if setting == "inductive" else 0.0)


def calibrated_scores(
    logits: torch.Tensor, score_shift: torch.Tensor, size: tuple[int, int], mask_size: int | None = None
) -> torch.Tensor:
    """
    Per-pixel class scores as the original computes them: mask logits upsampled to `mask_size`, their sigmoid minus
    the seen-class shift, then resized bilinearly to `size`.

    Args:
        logits (`torch.Tensor` of shape `(batch_size, num_classes, grid_height, grid_width)`).
        score_shift (`torch.Tensor` of shape `(num_classes,)` or `(batch_size, num_classes)`).
        size (`tuple[int, int]`): the `(height, width)` of the result.
        mask_size (`int`, *optional*): see `upsample_mask_logits`.

    Returns:
        `torch.Tensor` of shape `(batch_size, num_classes, *size)`.
    """
    intermediate = (mask_size, mask_size) if mask_size is not None else tuple(size)
    upsampled = upsample_mask_logits(logits, intermediate)
    # In place where upsampling made a new tensor: a full-size score map per class is the largest tensor here.
    scores = upsampled.sigmoid() if upsampled is logits else upsampled.sigmoid_()
    scores = scores.sub_(score_shift[..., :, None, None].to(scores.dtype))
    if tuple(scores.shape[-2:]) != tuple(size):
        scores = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
    return scores
