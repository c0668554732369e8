"""The original's test-time sliding window, apart from the model that scores each window.

Three steps, each usable by any backend that turns a batch of crops into mask logits (the PyTorch model, or a
runtime returning numpy arrays): planning the windows (`plan_windows`, `window_batches`), summing their calibrated
scores at the processed resolution in float32 (`sliding_window_scores`), and the step to the output size
(`resize_scores` for every class's scores, `segment_in_class_chunks` for the class map alone, in pieces whose size
does not grow with the number of classes times the output's pixels). `sliding_window_results` composes them as
the PyTorch model and the ONNX Runtime segmenter both run them.
"""

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .calibration import calibrated_scores


# The step to the output size resizes this many score values (256 MiB of float32) at a time: fewer, larger pieces
# merge faster (a 12-megapixel photo takes 5 classes a piece, about 2 GiB peak with a ViT-B/16).
RESIZE_CHUNK_ELEMENTS = 2**26

# PyTorch's CPU bilinear kernel vectorises across channels for outputs whose height + width is at most this, and
# for exactly 3 channels on one thread; a class's result then depends on the classes resized beside it.
CHANNEL_VECTORISED_MAX_SIDES = 128
CHANNEL_VECTORISED_CLASSES = 3


def check_window(crop_size: int, stride: int, patch_size: int = 1) -> None:
    """Refuses a sliding window that would leave pixels uncovered (the original asserts full coverage)."""
    if crop_size <= 0 or stride <= 0:
        raise ValueError(f"crop_size and stride must be positive, got {crop_size} and {stride}.")
    if crop_size < patch_size:
        raise ValueError(f"crop_size ({crop_size}) is smaller than one {patch_size}x{patch_size} patch.")
    if stride > crop_size:
        raise ValueError(
            f"stride ({stride}) is larger than crop_size ({crop_size}): the windows would leave pixels between them "
            f"unsegmented; use a stride of at most {crop_size}."
        )


def window_starts(length: int, crop_size: int, stride: int) -> list[int]:
    """Start offsets of sliding windows along one side; the last window is shifted back to end at the border."""
    num_windows = max(length - crop_size + stride - 1, 0) // stride + 1
    return [max(min(index * stride + crop_size, length) - crop_size, 0) for index in range(num_windows)]


class Window(NamedTuple):
    """One crop of one image, in pixels of the processed image."""

    image_index: int
    top: int
    left: int
    height: int
    width: int

    @property
    def rows(self) -> slice:
        return slice(self.top, self.top + self.height)

    @property
    def columns(self) -> slice:
        return slice(self.left, self.left + self.width)


def plan_windows(image_sizes: Sequence[tuple[int, int]], crop_size: int, stride: int) -> list[Window]:
    """
    The windows covering every image, those of one size next to each other (images smaller than `crop_size` along
    a side get windows as small as the image there), each image's in row-major order.

    Args:
        image_sizes: the `(height, width)` of each processed image.

    Raises:
        ValueError: for a window that would leave pixels uncovered (see `check_window`).
    """
    check_window(crop_size, stride)
    windows = []
    for index, (height, width) in enumerate(image_sizes):
        crop = (min(crop_size, height), min(crop_size, width))
        windows += [
            Window(index, top, left, *crop)
            for top in window_starts(height, crop_size, stride)
            for left in window_starts(width, crop_size, stride)
        ]
    return sorted(windows, key=lambda window: (window.height, window.width))


def window_batches(windows: list[Window], window_batch_size: int | None = None) -> list[list[Window]]:
    """
    The batches to score: consecutive windows of one size, at most `window_batch_size` (all by default) at a time.

    Raises:
        ValueError: for a `window_batch_size` below 1.
    """
    if window_batch_size is not None and window_batch_size < 1:
        raise ValueError(f"window_batch_size must be at least 1, got {window_batch_size}.")
    window_batch_size = window_batch_size or len(windows)
    return [
        list(group)
        for start in range(0, len(windows), window_batch_size)
        for _, group in itertools.groupby(
            windows[start : start + window_batch_size], key=lambda window: (window.height, window.width)
        )
    ]


def sliding_window_scores(
    images: Sequence[torch.Tensor],
    window_logits: Callable[[torch.Tensor], torch.Tensor | np.ndarray],
    score_shift: torch.Tensor,
    crop_size: int,
    stride: int,
    mask_size: int | None = None,
    window_batch_size: int | None = None,
) -> list[torch.Tensor]:
    """
    Each image's calibrated class scores at its own (processed) resolution, as the original's sliding window
    computes them: every window's logits are calibrated (see `calibration.calibrated_scores`) at the window's size
    and the scores of overlapping windows are averaged. Sums are float32 whatever the logits' dtype.

    Args:
        images: `(num_channels, height, width)` tensors, any sizes.
        window_logits: maps a batch of crops `(num_windows, num_channels, crop_height, crop_width)` to their mask
            logits `(num_windows, num_classes, grid_height, grid_width)` (a tensor or a numpy array).
        score_shift (`torch.Tensor` of shape `(num_classes,)`): the seen-class shift of calibration.
        crop_size, stride: the window, in pixels.
        mask_size (`int`, *optional*): the square size the logits are upsampled to first (the model's image size).
        window_batch_size (`int`, *optional*): how many windows go to `window_logits` at once; all by default.

    Returns:
        One `torch.FloatTensor` of shape `(num_classes, height, width)` per image, on the images' device.
    """
    score_shift = score_shift.float()
    num_classes = score_shift.shape[0]
    batches = window_batches(
        plan_windows([tuple(image.shape[-2:]) for image in images], crop_size, stride), window_batch_size
    )
    sums = [image.new_zeros(num_classes, *image.shape[-2:], dtype=torch.float32) for image in images]
    counts = [image.new_zeros(1, *image.shape[-2:], dtype=torch.float32) for image in images]
    for batch in batches:
        crops = torch.stack([images[window.image_index][:, window.rows, window.columns] for window in batch])
        logits = torch.as_tensor(window_logits(crops), device=crops.device).float()
        # One window at a time: only one window of full-resolution scores exists beside the sums.
        for crop_logits, window in zip(logits.split(1), batch, strict=True):
            crop_scores = calibrated_scores(crop_logits, score_shift, (window.height, window.width), mask_size)
            sums[window.image_index][:, window.rows, window.columns] += crop_scores[0]
            counts[window.image_index][:, window.rows, window.columns] += 1
    return [image_sums.div_(image_counts) for image_sums, image_counts in zip(sums, counts, strict=True)]


def resize_scores(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resizes `(num_classes, height, width)` scores bilinearly to `size`; the same tensor when already that size."""
    if tuple(scores.shape[-2:]) == tuple(size):
        return scores
    return F.interpolate(scores[None], size=tuple(size), mode="bilinear", align_corners=False)[0]


@dataclass
class ClassMap:
    """
    The winning class of every pixel.

    Args:
        segmentation (`torch.LongTensor` of shape `(height, width)`): the index of each pixel's best-scoring class
            (the first of equal best scores, as `torch.argmax` takes it).
        scores (`torch.FloatTensor` of shape `(height, width)`): that class's score at the pixel.
        class_scores (`torch.FloatTensor` of shape `(num_classes, height, width)`, *optional*): every class's score,
            kept only when asked for.
    """

    segmentation: torch.LongTensor
    scores: torch.FloatTensor
    class_scores: torch.FloatTensor | None = None


def class_chunk_size(num_classes: int, size: tuple[int, int], chunk_elements: int | None = None) -> int:
    """
    How many classes to resize to `size` at once for about `chunk_elements` (`RESIZE_CHUNK_ELEMENTS` by default)
    values per piece, at least one class, such that each class's result is bit for bit what resizing all classes at
    once gives.
    """
    chunk_elements = RESIZE_CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    height, width = size
    if (
        num_classes * height * width <= chunk_elements
        or height + width <= CHANNEL_VECTORISED_MAX_SIDES
        or num_classes == CHANNEL_VECTORISED_CLASSES
    ):
        return num_classes
    chunk = max(1, min(num_classes, chunk_elements // (height * width)))
    while chunk > 1 and CHANNEL_VECTORISED_CLASSES in (chunk, num_classes % chunk):
        chunk -= 1
    return chunk


def segment_in_class_chunks(
    num_classes: int,
    size: tuple[int, int],
    class_scores: Callable[[slice], torch.Tensor],
    chunk_elements: int | None = None,
    keep_class_scores: bool = False,
) -> ClassMap:
    """
    The class map at `size` made from a few classes' scores at a time, with a running best score and class, equal
    bit for bit to `torch.argmax` over all classes' scores (ties and NaN scores included) while holding only one
    piece of classes at the output size.

    Args:
        num_classes (`int`): how many classes there are.
        size (`tuple[int, int]`): the `(height, width)` of the result.
        class_scores: maps a `slice` of class indices to those classes' scores, `(len(slice), *size)` float tensors,
            made with at most one bilinear resize to `size` (e.g. `lambda classes: resize_scores(scores[classes],
            size)`), so that pieces of any size give each class the same values.
        chunk_elements (`int`, *optional*): about how many score values one piece holds (`RESIZE_CHUNK_ELEMENTS`).
        keep_class_scores (`bool`): whether to keep every class's scores as well (`num_classes` times the memory).

    Returns:
        [`ClassMap`] of `size`.

    Raises:
        ValueError: for no classes.
    """
    if num_classes < 1:
        raise ValueError("There are no classes to segment into.")
    chunk = class_chunk_size(num_classes, size, chunk_elements)
    best_scores = best_classes = kept = None
    for start in range(0, num_classes, chunk):
        piece = class_scores(slice(start, min(start + chunk, num_classes)))
        if keep_class_scores and chunk == num_classes:
            kept = piece
        elif keep_class_scores:
            if kept is None:
                kept = piece.new_empty(num_classes, *piece.shape[-2:])
            kept[start : start + piece.shape[0]] = piece
        piece_scores, piece_classes = piece.max(dim=0)
        if best_scores is None:
            best_scores, best_classes = piece_scores, piece_classes
            continue
        # Strictly better keeps the first of equal scores; a NaN beats any number, as in torch.argmax.
        better = (piece_scores > best_scores) | (piece_scores.isnan() & ~best_scores.isnan())
        torch.where(better, piece_scores, best_scores, out=best_scores)
        torch.where(better, piece_classes.add_(start), best_classes, out=best_classes)
    return ClassMap(segmentation=best_classes, scores=best_scores, class_scores=kept)


def segment_scores(
    scores: torch.Tensor,
    size: tuple[int, int],
    chunk_elements: int | None = None,
    keep_class_scores: bool = False,
) -> ClassMap:
    """
    The class map of `(num_classes, height, width)` scores resized bilinearly to `size`, made a few classes at a
    time (see `segment_in_class_chunks`): the same as `resize_scores(scores, size).argmax(dim=0)`.
    """
    return segment_in_class_chunks(
        len(scores), size, lambda classes: resize_scores(scores[classes], size), chunk_elements, keep_class_scores
    )


def sliding_window_results(
    pixel_values: torch.Tensor | Sequence[torch.Tensor],
    window_logits: Callable[[torch.Tensor], torch.Tensor | np.ndarray],
    score_shift: torch.Tensor,
    output_size: tuple[int, int] | Sequence[tuple[int, int]] | None,
    crop_size: int,
    stride: int,
    mask_size: int | None = None,
    window_batch_size: int | None = None,
    output: str = "scores",
) -> torch.Tensor | list[torch.Tensor] | list[ClassMap]:
    """
    The whole test-time path after the model, whichever backend scores the windows: `sliding_window_scores`, then
    every class's scores resized to the output size, or the class map made a few classes at a time.

    Args:
        pixel_values: a `(batch_size, num_channels, height, width)` tensor, or a list of `(num_channels, height,
            width)` tensors of different sizes.
        window_logits, score_shift, crop_size, stride, mask_size, window_batch_size: see `sliding_window_scores`.
        output_size (`tuple[int, int]` or a list of them, *optional*): `(height, width)` of the result, for every
            image or one per image; each input's own size when None.
        output (`str`): `"scores"` or `"segmentation"`.

    Returns:
        With `output="scores"`: a `(batch_size, num_classes, *output_size)` tensor for a tensor input, else one
        `(num_classes, height, width)` tensor per image. With `output="segmentation"`: one [`ClassMap`] per image.

    Raises:
        ValueError: for an unknown `output`, no images, or output sizes that do not match the images.
    """
    if output not in ("scores", "segmentation"):
        raise ValueError(f'output must be "scores" or "segmentation", got {output!r}.')
    images = list(pixel_values)
    if not images:
        raise ValueError("No images were given.")
    if output_size is None or isinstance(output_size[0], int):
        output_sizes = [output_size or tuple(image.shape[-2:]) for image in images]
    else:
        output_sizes = list(output_size)
    if len(output_sizes) != len(images):
        raise ValueError(f"The number of output sizes ({len(output_sizes)}) is not that of images ({len(images)}).")
    if isinstance(pixel_values, torch.Tensor) and len({tuple(size) for size in output_sizes}) > 1:
        raise ValueError("A batch tensor gets one output size; pass a list of images for several sizes.")
    image_scores = sliding_window_scores(
        images, window_logits, score_shift, crop_size, stride, mask_size, window_batch_size
    )
    if output == "segmentation":
        return [segment_scores(scores, size) for scores, size in zip(image_scores, output_sizes, strict=True)]
    results = [resize_scores(scores, size) for scores, size in zip(image_scores, output_sizes, strict=True)]
    return torch.stack(results) if isinstance(pixel_values, torch.Tensor) else results
