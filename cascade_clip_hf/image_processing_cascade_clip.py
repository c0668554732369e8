"""Image processor for Cascade-CLIP: any image to normalised RGB at the original's test scale, back to class maps."""

import io
import os
import warnings
from collections.abc import Sequence

import httpx
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
from transformers.utils import logging

from .labels import IGNORE_INDEX, reduce_zero_label


logger = logging.get_logger(__name__)

# mmsegmentation's ImageNet statistics on the 0-255 scale, which the original release normalises with.
ORIGINAL_IMAGE_MEAN = (123.675, 116.28, 103.53)
ORIGINAL_IMAGE_STD = (58.395, 57.12, 57.375)
LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")


class ImageInputError(ValueError):
    """An image or label map that cannot be used, with what is wrong with it."""


def download(url: str, timeout: float | None = None) -> bytes:
    """The bytes at an `http(s)://` URL; `timeout` in seconds (`None` waits forever)."""
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as error:
        raise ImageInputError(f"{url}: cannot download ({error}).") from error
    return response.content


def open_image(path: str | os.PathLike, timeout: float | None = None) -> PIL.Image.Image:
    """
    Opens and fully decodes an image file or `http(s)://` URL, so that a truncated or corrupt file fails here,
    naming the path.

    Raises:
        ImageInputError: the path is missing or a folder, the URL cannot be downloaded, the file is not a readable
            image, or its header claims more than `PIL.Image.MAX_IMAGE_PIXELS` pixels (a possible decompression
            bomb, refused before its pixels are allocated).
    """
    source = path
    if isinstance(path, str) and path.startswith(("http://", "https://")):
        source = io.BytesIO(download(path, timeout))
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice as many, and would then allocate them all.
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(source) as image:
                image.load()
                return image.copy()
    except FileNotFoundError as error:
        raise ImageInputError(f"{path}: no such file.") from error
    except IsADirectoryError as error:
        raise ImageInputError(f"{path}: a folder, not an image.") from error
    except (PIL.Image.DecompressionBombWarning, PIL.Image.DecompressionBombError) as error:
        raise ImageInputError(f"{path}: refused as a possible decompression bomb ({error})") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(f"{path}: not a readable image ({error}).") from error


def integer_to_uint8(array: np.ndarray) -> np.ndarray:
    """Brings integer pixels to 8 bits: 16-bit data is shifted down as OpenCV's reader (the original's) does."""
    if array.dtype == np.uint8:
        return array
    if array.size and (array.min() < 0 or array.max() > 65535):
        raise ImageInputError(f"integer pixels must lie in 0..65535, found {array.min()}..{array.max()}.")
    if array.dtype == np.uint16 or (array.size and array.max() > 255):
        return (array.astype(np.uint32) >> 8).astype(np.uint8)
    return array.astype(np.uint8)


def float_to_uint8(array: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] are scaled to 0..255; floats already on the 0..255 scale are kept."""
    if not np.isfinite(array).all():
        raise ImageInputError("pixels hold NaN or infinite values.")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if low < 0 or high > 255:
        raise ImageInputError(
            f"float pixels must lie in [0, 1] or [0, 255], found {low:.3g}..{high:.3g}; pass uint8 images "
            "or unnormalised floats (normalisation is the processor's job)."
        )
    scale = 255.0 if high <= 1.0 else 1.0
    return np.round(array.astype(np.float64) * scale).astype(np.uint8)


def to_hwc_array(image) -> np.ndarray:
    """A numpy or torch image as an (height, width, channels) or (height, width) array; channels-first accepted."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise ImageInputError(
            f"expected an image of shape (height, width), (height, width, channels) or (channels, height, width) "
            f"with 1 to 4 channels, got shape {array.shape}."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageInputError(f"the image is empty (shape {array.shape}).")
    return array


def to_rgb_uint8(image, timeout: float | None = None) -> np.ndarray:
    """
    Any supported image as an RGB `uint8` array of shape `(height, width, 3)`; every entry point of the package
    reads images with it, through [`CascadeClipImageProcessor.read_image`].

    PIL images of any mode (EXIF orientation applied; 16-bit and float pixels scaled to 8 bits before any
    conversion to RGB; alpha dropped as the original's OpenCV reader drops it), numpy arrays and torch tensors
    (grayscale, gray+alpha, RGB or RGBA; uint8, 16-bit, bool or float), and paths or `http(s)://` URLs
    (`timeout` in seconds). Errors about a file name it.
    """
    if isinstance(image, (str, os.PathLike)):
        image, path = open_image(image, timeout), image
        try:
            return to_rgb_uint8(image)
        except ImageInputError as error:
            raise ImageInputError(f"{path}: {error}") from error
    if isinstance(image, PIL.Image.Image):
        image = PIL.ImageOps.exif_transpose(image)
        if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            image = np.array(image)
        else:
            return np.array(image.convert("RGBA").convert("RGB") if image.mode == "PA" else image.convert("RGB"))
    array = to_hwc_array(image)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.integer):
        array = integer_to_uint8(array)
    elif np.issubdtype(array.dtype, np.floating):
        array = float_to_uint8(array)
    else:
        raise ImageInputError(f"unsupported pixel type {array.dtype}.")
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=-1)
    if array.shape[-1] == 2:
        return np.repeat(array[..., :1], 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def to_label_array(label_map) -> np.ndarray:
    """A label map (PIL in a single-channel mode, numpy or torch) as an `int64` array of shape `(height, width)`."""
    if isinstance(label_map, (str, os.PathLike)):
        label_map = open_image(label_map)
    if isinstance(label_map, PIL.Image.Image):
        if label_map.mode not in LABEL_MODES:
            raise ImageInputError(
                f"a label map must be single-channel class indices (PIL mode L, P or I), got mode {label_map.mode}."
            )
        label_map = np.array(label_map)
    array = to_hwc_array(label_map)
    if array.ndim != 2:
        raise ImageInputError(f"a label map must be single-channel class indices, got shape {array.shape}.")
    if np.issubdtype(array.dtype, np.floating):
        if not np.array_equal(array, np.round(array)):
            raise ImageInputError("a label map must hold whole class indices, found fractional values.")
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ImageInputError(f"unsupported label type {array.dtype}.")
    return array.astype(np.int64)


def keep_ratio_size(height: int, width: int, shortest_edge: int, longest_edge: int) -> tuple[int, int]:
    """The original's keep-ratio rescale: the largest scale with short side <= shortest_edge and long side <=
    longest_edge, rounded half up."""
    scale = min(longest_edge / max(height, width), shortest_edge / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def as_list(inputs) -> list:
    """One input or a batch of them as a list."""
    if isinstance(inputs, (list, tuple)):
        return list(inputs)
    if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 4:
        return list(inputs)
    return [inputs]


class CascadeClipImageProcessor(BaseImageProcessor):
    r"""
    Prepares images for [`CascadeClipForZeroShotSegmentation`] the way the original evaluates: RGB, resized keeping
    the aspect ratio (short side 512, long side at most 2048; bilinear on 8-bit pixels), normalised with
    mmsegmentation's ImageNet statistics on the 0-255 scale. Label maps are resized with nearest neighbours.

    Args:
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize.
        size (`dict`, *optional*, defaults to `{"shortest_edge": 512, "longest_edge": 2048}`):
            `{"shortest_edge", "longest_edge"}` to keep the aspect ratio, or `{"height", "width"}` for a fixed size.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise.
        image_mean (`list[float]`, *optional*, defaults to `[123.675, 116.28, 103.53]`):
            Per-channel mean, on the 0-255 scale.
        image_std (`list[float]`, *optional*, defaults to `[58.395, 57.12, 57.375]`):
            Per-channel standard deviation, on the 0-255 scale.
        do_reduce_labels (`bool`, *optional*, defaults to `False`):
            Whether label 0 is background to ignore (PASCAL VOC, PASCAL Context): 0 becomes `ignore_index` and
            every other label drops by one.
        ignore_index (`int`, *optional*, defaults to 255):
            The label of pixels without a class.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | None = None,
        do_normalize: bool = True,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        do_reduce_labels: bool = False,
        ignore_index: int = IGNORE_INDEX,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.do_resize = do_resize
        self.size = dict(size or {"shortest_edge": 512, "longest_edge": 2048})
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean or ORIGINAL_IMAGE_MEAN)
        self.image_std = list(image_std or ORIGINAL_IMAGE_STD)
        self.do_reduce_labels = do_reduce_labels
        self.ignore_index = ignore_index
        self.check_size(self.size)

    @staticmethod
    def check_size(size: dict[str, int]) -> None:
        if set(size) not in ({"shortest_edge", "longest_edge"}, {"height", "width"}) or min(size.values()) <= 0:
            raise ValueError(
                'size must be {"shortest_edge": S, "longest_edge": L} or {"height": H, "width": W} with positive '
                f"values, got {size}."
            )

    def target_size(self, height: int, width: int, size: dict[str, int]) -> tuple[int, int]:
        """The `(height, width)` an image of `(height, width)` is resized to."""
        if "height" in size:
            return size["height"], size["width"]
        return keep_ratio_size(height, width, size["shortest_edge"], size["longest_edge"])

    def read_image(self, image, timeout: float | None = None) -> np.ndarray:
        """
        Reads one image as every entry point of the package does (this processor, the zero-shot pipeline, the
        command line, the demo); a method so that the pipeline saved beside a model, which cannot import this
        module, reads the same way.

        Args:
            image: a path or `http(s)://` URL, a PIL image of any mode, a numpy array or a torch tensor.
            timeout (`float`, *optional*): seconds to wait for a URL.

        Returns:
            `np.ndarray` of shape `(height, width, 3)`, `uint8` RGB, upright (EXIF orientation applied).

        Raises:
            ImageInputError: what makes the image unusable; for a file or URL, naming it.
        """
        return to_rgb_uint8(image, timeout=timeout)

    def preprocess(
        self,
        images,
        segmentation_maps=None,
        do_resize: bool | None = None,
        size: dict[str, int] | None = None,
        do_normalize: bool | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        do_reduce_labels: bool | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """
        Args:
            images: one image or a list: PIL images, numpy arrays or torch tensors (HWC or CHW; uint8, 16-bit,
                bool or float in [0, 1] or [0, 255]), file paths or URLs; see `read_image`.
            segmentation_maps (*optional*): one label map per image (single-channel class indices).
            return_tensors (`str`, *optional*, defaults to `"pt"`): `"pt"` for torch tensors, `"np"` for numpy.

        Returns:
            [`BatchFeature`] with
            - `pixel_values`: `(batch_size, 3, height, width)` when all images end up the same size, else a list
              of `(3, height, width)`;
            - `labels` (with `segmentation_maps`): `(batch_size, height, width)` or a list of `(height, width)`.
        """
        do_resize = self.do_resize if do_resize is None else do_resize
        size = dict(size) if size is not None else self.size
        self.check_size(size)
        do_normalize = self.do_normalize if do_normalize is None else do_normalize
        mean = torch.tensor(image_mean or self.image_mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(image_std or self.image_std, dtype=torch.float32)[:, None, None]
        do_reduce_labels = self.do_reduce_labels if do_reduce_labels is None else do_reduce_labels
        if return_tensors not in ("pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}.")

        images = as_list(images)
        if not images:
            raise ValueError("No images were given.")
        label_maps = as_list(segmentation_maps) if segmentation_maps is not None else None
        if label_maps is not None and len(label_maps) != len(images):
            raise ValueError(f"Got {len(images)} images but {len(label_maps)} segmentation maps.")

        pixel_values, labels = [], []
        for index, image in enumerate(images):
            try:
                rgb = self.read_image(image)
            except ImageInputError as error:
                raise ImageInputError(f"Image {index} of {len(images)}: {error}") from error
            height, width = rgb.shape[:2]
            new_size = self.target_size(height, width, size) if do_resize else (height, width)
            if min(new_size) < 1:
                raise ImageInputError(
                    f"Image {index} of {len(images)}: {width}x{height} pixels (width x height) would be resized to "
                    f"{new_size[1]}x{new_size[0]} for size {size}; the image is too thin."
                )
            pixels = torch.from_numpy(rgb).permute(2, 0, 1).to(torch.float32)
            if new_size != (height, width):
                pixels = F.interpolate(pixels[None], size=new_size, mode="bilinear", align_corners=False)[0]
                pixels = pixels.round().clamp(0, 255)
            if do_normalize:
                pixels = (pixels - mean) / std
            pixel_values.append(pixels)

            if label_maps is not None:
                try:
                    label_array = to_label_array(label_maps[index])
                except ImageInputError as error:
                    raise ImageInputError(f"Segmentation map {index} of {len(images)}: {error}") from error
                if label_array.shape != (height, width):
                    raise ImageInputError(
                        f"Segmentation map {index} has size {label_array.shape} but its image has {(height, width)}."
                    )
                if do_reduce_labels:
                    label_array = reduce_zero_label(label_array, self.ignore_index)
                label_tensor = torch.from_numpy(label_array)
                if new_size != (height, width):
                    label_tensor = F.interpolate(label_tensor[None, None].double(), size=new_size, mode="nearest")
                    label_tensor = label_tensor[0, 0].long()
                labels.append(label_tensor)

        data = {"pixel_values": stack_if_same_size(pixel_values, return_tensors)}
        if label_maps is not None:
            data["labels"] = stack_if_same_size(labels, return_tensors)
        return BatchFeature(data=data)

    def post_process_semantic_segmentation(
        self, outputs, target_sizes: Sequence[tuple[int, int]] | None = None
    ) -> list[torch.Tensor]:
        """
        Turns model outputs into class-id maps: each class's score is the sigmoid of its (upsampled) mask logits
        minus its `score_shift` (the seen-class calibration of inductive models); each pixel takes the best class.

        Args:
            outputs ([`CascadeClipSegmentationOutput`] or `torch.Tensor`): the model's output, or calibrated scores
                of shape `(batch_size, num_classes, height, width)` from `sliding_window_inference`.
            target_sizes (`list[tuple[int, int]]`, *optional*): the `(height, width)` of each result; the logits'
                (or scores') own size when not given.

        Returns:
            `list[torch.LongTensor]`: one `(height, width)` map of class indices per image.
        """
        if isinstance(outputs, torch.Tensor):
            maps, score_shift = outputs, None
        else:
            maps, score_shift = outputs.logits, outputs.score_shift
        if target_sizes is not None and len(target_sizes) != maps.shape[0]:
            raise ValueError(f"Got {len(target_sizes)} target sizes for a batch of {maps.shape[0]} images.")

        segmentations = []
        for index, image_maps in enumerate(maps):
            image_maps = image_maps[None].float()
            if target_sizes is not None and tuple(target_sizes[index]) != tuple(image_maps.shape[-2:]):
                image_maps = F.interpolate(
                    image_maps, size=tuple(target_sizes[index]), mode="bilinear", align_corners=False
                )
            if score_shift is not None:
                image_maps = image_maps.sigmoid() - score_shift[index].float()[None, :, None, None]
            segmentations.append(image_maps[0].argmax(dim=0))
        return segmentations


def stack_if_same_size(tensors: list[torch.Tensor], return_tensors: str):
    """One tensor for a batch of equal sizes, a list otherwise; as numpy with `return_tensors="np"`."""
    if all(tensor.shape == tensors[0].shape for tensor in tensors):
        batch = torch.stack(tensors)
        return batch if return_tensors == "pt" else batch.numpy()
    return tensors if return_tensors == "pt" else [tensor.numpy() for tensor in tensors]


__all__ = ["CascadeClipImageProcessor"]
