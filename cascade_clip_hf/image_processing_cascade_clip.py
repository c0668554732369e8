"""Image processor for Cascade-CLIP: any image to normalised RGB at the original's test scale, back to class maps."""

import io
import os
import stat
import warnings
from collections.abc import Callable, Sequence

import httpx
import numpy as np
import PIL.Image
import PIL.ImageOps
import torch
import torch.nn.functional as F
from transformers.image_processing_backends import PilBackend
from transformers.image_processing_outputs import SemanticSegmentationPostProcessorOutput
from transformers.image_processing_utils import BatchFeature
from transformers.image_utils import ChannelDimension, ImageInput, PILImageResampling, SizeDict
from transformers.processing_utils import ImagesKwargs, Unpack
from transformers.utils import logging

from .calibration import calibrated_scores, upsample_mask_logits
from .labels import IGNORE_INDEX, reduce_zero_label
from .sliding_window import resize_scores, segment_in_class_chunks


logger = logging.get_logger(__name__)

# mmsegmentation's ImageNet statistics on the 0-255 scale, which the original release normalises with.
ORIGINAL_IMAGE_MEAN = (123.675, 116.28, 103.53)
ORIGINAL_IMAGE_STD = (58.395, 57.12, 57.375)
LABEL_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N")
# PIL modes whose pixels go beyond 8 bits: brought to 8 bits before any conversion to RGB, which would clip them.
HIGH_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


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


# What a path names when it is not a regular file, for messages; reading a named pipe would wait for a writer forever.
NOT_REGULAR_FILES = {
    stat.S_ISDIR: "a folder",
    stat.S_ISFIFO: "a named pipe",
    stat.S_ISSOCK: "a socket",
    stat.S_ISCHR: "a device",
    stat.S_ISBLK: "a device",
}


def not_regular_file(mode: int) -> str | None:
    """What a file of `mode` (`os.stat`'s `st_mode`) is when it is not a regular file; None for a regular one."""
    if stat.S_ISREG(mode):
        return None
    return next((what for is_kind, what in NOT_REGULAR_FILES.items() if is_kind(mode)), "a special file")


def check_image_file(path: str | os.PathLike) -> None:
    """
    Checks, without opening it, that `path` is a regular file (or a link to one) that can be read.

    Raises:
        ImageInputError: naming `path`, when it is missing, a broken link, a folder, a named pipe, a socket, a
            device, or not readable.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as error:
        if os.path.islink(path):
            raise ImageInputError(f"{path}: a link to {os.readlink(path)}, which does not exist.") from error
        raise ImageInputError(f"{path}: no such file.") from error
    except OSError as error:
        raise ImageInputError(f"{path}: cannot be read ({error.strerror}).") from error
    what = not_regular_file(mode)
    if what is not None:
        raise ImageInputError(f"{path}: {what}, not an image file.")
    if not os.access(path, os.R_OK):
        raise ImageInputError(f"{path}: cannot be read (permission denied).")


def open_regular_file(path: str | os.PathLike):
    """
    `path` opened for reading in binary, after `check_image_file`; opened without waiting, so that a file swapped
    for a named pipe in between is refused rather than waited on.
    """
    check_image_file(path)
    try:
        file = open(path, "rb", opener=lambda name, flags: os.open(name, flags | getattr(os, "O_NONBLOCK", 0)))
    except FileNotFoundError as error:
        raise ImageInputError(f"{path}: no such file.") from error
    except OSError as error:
        raise ImageInputError(f"{path}: cannot be read ({error.strerror}).") from error
    what = not_regular_file(os.fstat(file.fileno()).st_mode)
    if what is not None:
        file.close()
        raise ImageInputError(f"{path}: {what}, not an image file.")
    return file


def open_image(path: str | os.PathLike, timeout: float | None = None) -> PIL.Image.Image:
    """
    Opens and fully decodes an image file or `http(s)://` URL, so that a truncated or corrupt file fails here,
    naming the path. A path must be a readable regular file: a named pipe, socket or device is refused without
    reading it (see `check_image_file`).

    Raises:
        ImageInputError: the path is missing, a broken link, a folder or another file that is not a regular one, or
            not readable; the URL cannot be downloaded; the file is not a readable image, or its header claims
            more than `PIL.Image.MAX_IMAGE_PIXELS` pixels (a possible decompression bomb, refused before its pixels
            are allocated).
    """
    if isinstance(path, str) and path.startswith(("http://", "https://")):
        source = io.BytesIO(download(path, timeout))
    else:
        source = open_regular_file(path)
    try:
        with warnings.catch_warnings(), source:
            # PIL only warns between MAX_IMAGE_PIXELS and twice as many, and would then allocate them all.
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(source) as image:
                image.load()
                return image.copy()
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
    # By kind and size, so that big-endian 16-bit data (PIL's I;16B, numpy's >u2) is shifted too.
    if (array.dtype.kind == "u" and array.dtype.itemsize == 2) or (array.size and array.max() > 255):
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


def to_hwc_array(image, input_data_format: str | ChannelDimension | None = None) -> np.ndarray:
    """
    A numpy or torch image as an (height, width, channels) or (height, width) array. Without `input_data_format`,
    channels-first is recognised by a first axis of 1 to 4 entries and a last axis of more.
    """
    if image is None:
        raise ImageInputError("got None instead of an image.")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        # numpy has no bfloat16: half-precision floats are widened first.
        image = (image.float() if image.is_floating_point() else image).numpy()
    array = np.asarray(image)
    if array.ndim == 3:
        if input_data_format is not None:
            channels_first = ChannelDimension(input_data_format) == ChannelDimension.FIRST
        else:
            channels_first = array.shape[0] in (1, 2, 3, 4) and array.shape[-1] not in (1, 2, 3, 4)
        if channels_first:
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


def read_file_or_image(image, timeout: float | None, read):
    """`read(image)`, where a path or URL is opened first and named in any error about its pixels."""
    if not isinstance(image, (str, os.PathLike)):
        return read(image)
    decoded = open_image(image, timeout)
    try:
        return read(decoded)
    except ImageInputError as error:
        raise ImageInputError(f"{image}: {error}") from error


def to_uint8(
    image, input_data_format: str | ChannelDimension | None = None, timeout: float | None = None
) -> np.ndarray:
    """
    Any supported image as a `uint8` array of shape `(height, width)` or `(height, width, channels)`, with the
    channels it has (a PIL palette image gives its indices, as `np.array` does). PIL images are turned upright
    (EXIF orientation); 16-bit pixels are shifted down to 8 bits as OpenCV's reader (the original's) does, floats
    in [0, 1] scaled to 0..255, booleans to 0 and 255.
    """

    def read(image) -> np.ndarray:
        if isinstance(image, PIL.Image.Image):
            array = to_hwc_array(np.array(PIL.ImageOps.exif_transpose(image)), ChannelDimension.LAST)
        else:
            array = to_hwc_array(image, input_data_format)
        if array.dtype == np.bool_:
            return array.astype(np.uint8) * 255
        if np.issubdtype(array.dtype, np.integer):
            return integer_to_uint8(array)
        if np.issubdtype(array.dtype, np.floating):
            return float_to_uint8(array)
        raise ImageInputError(f"unsupported pixel type {array.dtype}.")

    return read_file_or_image(image, timeout, read)


def to_rgb_uint8(
    image, input_data_format: str | ChannelDimension | None = None, timeout: float | None = None
) -> np.ndarray:
    """
    Any supported image as an RGB `uint8` array of shape `(height, width, 3)`; every entry point of the package
    reads images with it, through [`CascadeClipImageProcessor.read_image`].

    PIL images of any mode (EXIF orientation applied; 16-bit and float pixels scaled to 8 bits before any
    conversion to RGB; alpha dropped as the original's OpenCV reader drops it), numpy arrays and torch tensors
    (grayscale, gray+alpha, RGB or RGBA; uint8, 16-bit, bool or float), and paths or `http(s)://` URLs
    (`timeout` in seconds). Errors about a file name it.
    """

    def read(image) -> np.ndarray:
        if isinstance(image, PIL.Image.Image) and image.mode not in HIGH_BIT_MODES:
            image = PIL.ImageOps.exif_transpose(image)
            return np.array(image.convert("RGBA").convert("RGB") if image.mode == "PA" else image.convert("RGB"))
        array = to_uint8(image, input_data_format)
        if array.ndim == 2:
            return np.repeat(array[..., None], 3, axis=-1)
        if array.shape[-1] == 2:
            return np.repeat(array[..., :1], 3, axis=-1)
        return np.ascontiguousarray(array[..., :3])

    return read_file_or_image(image, timeout, read)


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
    """One input or a batch of them as a flat list; per-sample lists (`[[image], [image]]`) are flattened."""
    if isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 4:
        return list(inputs)
    if not isinstance(inputs, (list, tuple)):
        return [inputs]
    return [item for entry in inputs for item in (as_list(entry) if isinstance(entry, (list, tuple)) else [entry])]


def torch_interpolation(resample) -> str:
    """torch's interpolation mode for a PIL resampling filter this processor offers."""
    filters = {
        PILImageResampling.NEAREST: "nearest-exact",  # PIL's nearest neighbour: the nearest pixel centre
        PILImageResampling.BILINEAR: "bilinear",  # OpenCV's INTER_LINEAR, which the original resizes with
        PILImageResampling.BICUBIC: "bicubic",
    }
    if resample not in filters:
        raise ValueError(f"resample must be PILImageResampling.NEAREST, BILINEAR or BICUBIC, got {resample!r}.")
    return filters[PILImageResampling(resample)]


def as_batch(arrays: list[np.ndarray], return_tensors: str | None):
    """
    `return_tensors=None`: the list of numpy arrays as it is. Otherwise one `"pt"` tensor or `"np"` array for a
    batch of equal shapes, and a list of them for different shapes.
    """
    if return_tensors is None:
        return arrays
    if all(array.shape == arrays[0].shape for array in arrays):
        batch = np.stack(arrays)
        return torch.from_numpy(batch) if return_tensors == "pt" else batch
    if return_tensors == "pt":
        return [torch.from_numpy(np.ascontiguousarray(array)) for array in arrays]
    return arrays


class CascadeClipImageProcessorKwargs(ImagesKwargs, total=False):
    r"""
    do_reduce_labels (`bool`, *optional*, defaults to `self.do_reduce_labels`):
        Whether label 0 is background to ignore (PASCAL VOC, PASCAL Context): 0 becomes `ignore_index` and every
        other label drops by one.
    ignore_index (`int`, *optional*, defaults to `self.ignore_index`):
        The label of pixels without a class; also the labels' padding (`do_pad`).
    mask_size (`int`, *optional*, defaults to `self.mask_size`):
        The model's `image_size`, where post-processing upsamples mask logits first, as the model does.
    """

    do_reduce_labels: bool
    ignore_index: int
    mask_size: int | None


class CascadeClipImageProcessor(PilBackend):
    r"""
    Prepares images for [`CascadeClipForZeroShotSegmentation`] the way the original evaluates: RGB, resized keeping
    the aspect ratio (short side 512, long side at most 2048; bilinear on 8-bit pixels, rounded back to 8-bit
    levels as OpenCV's resize of 8-bit images gives them), normalised with mmsegmentation's ImageNet statistics on
    the 0-255 scale. Label maps are resized with nearest neighbours.

    transformers' PIL/numpy backend (`PilBackend`) with the original's resize, computed with torch. Every setting
    below is also a keyword argument of a call, for that call.

    Args:
        do_convert_rgb (`bool`, *optional*, defaults to `True`):
            Whether to read images as RGB (see `read_image`). Otherwise images keep their channels (a palette image
            gives its indices); their pixels are still brought to 8 bits.
        do_resize (`bool`, *optional*, defaults to `True`):
            Whether to resize.
        size (`dict`, *optional*, defaults to `{"shortest_edge": 512, "longest_edge": 2048}`):
            `{"shortest_edge", "longest_edge"}` to keep the aspect ratio (the original's rule: the largest scale
            that keeps both sides within bounds, sizes rounded half up), or `{"height", "width"}` for a fixed size.
        resample (`PILImageResampling`, *optional*, defaults to `PILImageResampling.BILINEAR`):
            The resampling filter: `BILINEAR` (the original's), `BICUBIC` or `NEAREST`.
        do_rescale (`bool`, *optional*, defaults to `False`):
            Whether to multiply the pixels by `rescale_factor` before normalising. The default statistics are on
            the 0-255 scale, so the original does not rescale.
        rescale_factor (`float`, *optional*, defaults to `1/255`):
            The factor of `do_rescale`.
        do_normalize (`bool`, *optional*, defaults to `True`):
            Whether to normalise.
        image_mean (`list[float]`, *optional*, defaults to `[123.675, 116.28, 103.53]`):
            Per-channel mean, on the 0-255 scale (unless `do_rescale`).
        image_std (`list[float]`, *optional*, defaults to `[58.395, 57.12, 57.375]`):
            Per-channel standard deviation, on the same scale as `image_mean`.
        do_pad (`bool`, *optional*, defaults to `False`):
            Whether to pad the images of a call at the bottom and the right to the largest of them (or to
            `pad_size`): pixel values with 0 after normalisation (the mean colour, as mmsegmentation pads for
            training), labels with `ignore_index`; a `pixel_mask` (1 on the image, 0 on the padding) is returned.
        pad_size (`dict`, *optional*):
            `{"height", "width"}` to pad to instead of the largest image.
        do_reduce_labels (`bool`, *optional*, defaults to `False`):
            Whether label 0 is background to ignore (PASCAL VOC, PASCAL Context): 0 becomes `ignore_index` and
            every other label drops by one.
        ignore_index (`int`, *optional*, defaults to 255):
            The label of pixels without a class.
        mask_size (`int`, *optional*):
            The model's `image_size`: post-processing upsamples mask logits to this square size first and from
            there to the target size, the one rule of the model's loss and sliding window (`calibration.py`).
            Processors saved before it existed upsample straight to the target size.
        return_tensors (`str`, *optional*, defaults to `"pt"`):
            `"pt"` for torch tensors, `"np"` for numpy arrays, `None` for lists of numpy arrays.
    """

    valid_kwargs = CascadeClipImageProcessorKwargs
    model_input_names = ["pixel_values"]
    do_convert_rgb = True
    do_resize = True
    size = {"shortest_edge": 512, "longest_edge": 2048}
    resample = PILImageResampling.BILINEAR
    do_rescale = False
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = list(ORIGINAL_IMAGE_MEAN)
    image_std = list(ORIGINAL_IMAGE_STD)
    do_pad = False
    do_reduce_labels = False
    ignore_index = IGNORE_INDEX
    mask_size = None
    return_tensors = "pt"

    def __init__(self, **kwargs: Unpack[CascadeClipImageProcessorKwargs]):
        super().__init__(**kwargs)
        self.check_size(self.size)

    @staticmethod
    def check_size(size: dict[str, int] | SizeDict) -> None:
        size = dict(size)
        if set(size) not in ({"shortest_edge", "longest_edge"}, {"height", "width"}) or min(size.values()) <= 0:
            raise ValueError(
                'size must be {"shortest_edge": S, "longest_edge": L} or {"height": H, "width": W} with positive '
                f"values, got {size}."
            )

    def target_size(self, height: int, width: int, size: dict[str, int] | SizeDict) -> tuple[int, int]:
        """The `(height, width)` an image of `(height, width)` is resized to."""
        if "height" in size:
            return size["height"], size["width"]
        return keep_ratio_size(height, width, size["shortest_edge"], size["longest_edge"])

    def read_image(
        self,
        image,
        timeout: float | None = None,
        input_data_format: str | ChannelDimension | None = None,
    ) -> np.ndarray:
        """
        Reads one image as every entry point of the package does (this processor, the zero-shot pipeline, the
        command line, the demo); a method so that the pipeline saved beside a model, which cannot import this
        module, reads the same way.

        Args:
            image: a path or `http(s)://` URL, a PIL image of any mode, a numpy array or a torch tensor.
            timeout (`float`, *optional*): seconds to wait for a URL.
            input_data_format (`str` or `ChannelDimension`, *optional*): whether an array is channels-first or
                channels-last; recognised from its shape by default.

        Returns:
            `np.ndarray` of shape `(height, width, 3)`, `uint8` RGB, upright (EXIF orientation applied).

        Raises:
            ImageInputError: what makes the image unusable; for a file or URL, naming it.
        """
        return to_rgb_uint8(image, input_data_format=input_data_format, timeout=timeout)

    def preprocess(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None = None,
        **kwargs: Unpack[CascadeClipImageProcessorKwargs],
    ) -> BatchFeature:
        r"""
        Args:
            images: one image or a list: PIL images, numpy arrays or torch tensors (HWC or CHW; uint8, 16-bit,
                bool or float in [0, 1] or [0, 255]), file paths or URLs; see `read_image`.
            segmentation_maps (*optional*): one label map per image (single-channel class indices).
            kwargs: any setting of the class, for this call.

        Returns:
            [`BatchFeature`] with
            - `pixel_values`: `(batch_size, num_channels, height, width)` when all images end up the same size
              (or with `do_pad`), else a list of `(num_channels, height, width)`: the model's test-time path
              (`sliding_window_inference`, the zero-shot pipeline) runs every image at its own size, and the
              vision tower has no mask for padded pixels, so images are only padded when asked to;
            - `labels` (with `segmentation_maps`): `(batch_size, height, width)` or a list of `(height, width)`;
            - `pixel_mask` (with `do_pad`): `(batch_size, height, width)`, 1 on the image, 0 on the padding.
            With `return_tensors=None`, each is a list of numpy arrays.
        """
        return super().preprocess(images, segmentation_maps, **kwargs)

    def _validate_preprocess_kwargs(
        self,
        do_resize: bool | None = None,
        size: SizeDict | None = None,
        resample: PILImageResampling | int | None = None,
        do_center_crop: bool | None = None,
        data_format: str | ChannelDimension | None = None,
        return_tensors: str | None = None,
        **kwargs,
    ):
        super()._validate_preprocess_kwargs(do_resize=do_resize, size=size, resample=resample, **kwargs)
        if do_resize:
            self.check_size(size)
            torch_interpolation(resample)
        if do_center_crop:
            raise ValueError("CascadeClipImageProcessor does not crop: the original segments whole images.")
        if data_format is not None and ChannelDimension(data_format) != ChannelDimension.FIRST:
            raise ValueError(f"data_format must be 'channels_first', got {data_format!r}.")
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}.")

    def _preprocess_image_like_inputs(
        self,
        images: ImageInput,
        segmentation_maps: ImageInput | None,
        do_convert_rgb: bool,
        input_data_format: str | ChannelDimension | None,
        do_pad: bool,
        pad_size: SizeDict | None,
        ignore_index: int,
        return_tensors: str | None,
        **kwargs,
    ) -> BatchFeature:
        images = as_list(images)
        if not images:
            raise ValueError("No images were given.")
        label_maps = as_list(segmentation_maps) if segmentation_maps is not None else None
        if label_maps is not None and len(label_maps) != len(images):
            raise ValueError(
                f"The number of segmentation maps ({len(label_maps)}) is not that of images ({len(images)})."
            )

        images = self._prepare_image_like_inputs(
            images, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format
        )
        data = {"pixel_values": self._preprocess(images, **kwargs)}
        if label_maps is not None:
            image_sizes = [image.shape[-2:] for image in images]
            data["labels"] = self._preprocess_label_maps(label_maps, image_sizes, ignore_index=ignore_index, **kwargs)
        if do_pad:
            data["pixel_values"], data["pixel_mask"] = self.pad(
                data["pixel_values"], pad_size=pad_size, return_mask=True
            )
            if label_maps is not None:
                padded = self.pad(
                    [labels[None] for labels in data["labels"]], pad_size=pad_size, fill_value=ignore_index
                )
                data["labels"] = [labels[0] for labels in padded]
        return BatchFeature(data={key: as_batch(value, return_tensors) for key, value in data.items()})

    def _prepare_image_like_inputs(
        self,
        images: list,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> list[np.ndarray]:
        """Every image read as `uint8` `(channels, height, width)`; an error names the image's place in the batch."""
        prepared = []
        for index, image in enumerate(images):
            try:
                prepared.append(
                    self.process_image(image, do_convert_rgb=do_convert_rgb, input_data_format=input_data_format)
                )
            except ImageInputError as error:
                raise ImageInputError(f"Image {index} of {len(images)}: {error}") from error
        return prepared

    def process_image(
        self,
        image,
        do_convert_rgb: bool | None = None,
        input_data_format: str | ChannelDimension | None = None,
        **kwargs,
    ) -> np.ndarray:
        """One image as `uint8` `(channels, height, width)`: RGB as `read_image` reads it, or its own channels."""
        if do_convert_rgb:
            array = self.read_image(image, input_data_format=input_data_format)
        else:
            array = to_uint8(image, input_data_format=input_data_format)
        return np.moveaxis(array if array.ndim == 3 else array[..., None], -1, 0)

    def _preprocess(
        self,
        images: list[np.ndarray],
        do_resize: bool,
        size: SizeDict,
        resample: PILImageResampling | int,
        do_rescale: bool,
        rescale_factor: float,
        do_normalize: bool,
        image_mean: float | tuple[float, ...],
        image_std: float | tuple[float, ...],
        **kwargs,
    ) -> list[np.ndarray]:
        """Resizes, rescales and normalises `uint8` `(channels, height, width)` images into `float32` ones."""
        processed = []
        for index, image in enumerate(images):
            image = image.astype(np.float32)
            if do_resize:
                try:
                    image = self.resize(image, size, resample)
                except ImageInputError as error:
                    raise ImageInputError(f"Image {index} of {len(images)}: {error}") from error
            if do_rescale:
                image = self.rescale(image, rescale_factor)
            if do_normalize:
                image = self.normalize(image, image_mean, image_std)
            processed.append(image)
        return processed

    def resize(
        self, image: np.ndarray, size: SizeDict, resample: PILImageResampling | int | None = None, **kwargs
    ) -> np.ndarray:
        """
        Resizes `float32` `(channels, height, width)` pixels on the 0-255 scale with torch, rounded to 8-bit levels:
        the original resizes 8-bit images with OpenCV, whose `INTER_LINEAR` this matches to one level.
        """
        height, width = image.shape[-2:]
        new_size = self.target_size(height, width, size)
        if min(new_size) < 1:
            raise ImageInputError(
                f"{width}x{height} pixels (width x height) would be resized to {new_size[1]}x{new_size[0]} for size "
                f"{dict(size)}; the image is too thin."
            )
        if new_size == (height, width):
            return image
        mode = torch_interpolation(self.resample if resample is None else resample)
        align_corners = None if mode == "nearest-exact" else False
        pixels = F.interpolate(torch.from_numpy(image)[None], size=new_size, mode=mode, align_corners=align_corners)
        return pixels[0].round().clamp(0, 255).numpy()

    def _preprocess_label_maps(
        self,
        label_maps: list,
        image_sizes: list[tuple[int, int]],
        do_reduce_labels: bool,
        ignore_index: int,
        do_resize: bool,
        size: SizeDict,
        **kwargs,
    ) -> list[np.ndarray]:
        """Label maps as `int64` `(height, width)`, reduced if asked and resized as their images."""
        labels = []
        for index, (label_map, image_size) in enumerate(zip(label_maps, image_sizes, strict=True)):
            try:
                label_array = to_label_array(label_map)
            except ImageInputError as error:
                raise ImageInputError(f"Segmentation map {index} of {len(label_maps)}: {error}") from error
            if label_array.shape != tuple(image_size):
                raise ImageInputError(
                    f"Segmentation map {index} has size {label_array.shape} but its image has {tuple(image_size)}."
                )
            if do_reduce_labels:
                label_array = reduce_zero_label(label_array, ignore_index)
            if do_resize:
                label_array = self.resize_label_map(label_array, size)
            labels.append(label_array)
        return labels

    def resize_label_map(self, label_map: np.ndarray, size: SizeDict) -> np.ndarray:
        """Resizes an `int64` `(height, width)` label map to its image's new size with nearest neighbours."""
        height, width = label_map.shape
        new_size = self.target_size(height, width, size)
        if new_size == (height, width):
            return label_map
        labels = F.interpolate(torch.from_numpy(label_map)[None, None].double(), size=new_size, mode="nearest")
        return labels[0, 0].long().numpy()

    def post_process_semantic_segmentation(
        self,
        outputs,
        target_sizes: Sequence[tuple[int, int]] | torch.Tensor | None = None,
        return_segmentation_scores: bool = False,
    ) -> list[torch.Tensor] | list[SemanticSegmentationPostProcessorOutput]:
        """
        Turns model outputs into class-id maps: each class's score is the sigmoid of its (upsampled) mask logits
        minus its `score_shift` (the seen-class calibration of inductive models); each pixel takes the best class.

        Args:
            outputs ([`CascadeClipSegmentationOutput`] or `torch.Tensor`): the model's output, or calibrated scores
                of shape `(batch_size, num_classes, height, width)` from `sliding_window_inference`. An output
                without `score_shift` (e.g. `SemanticSegmenterOutput`) is taken by its logits.
            target_sizes (`list[tuple[int, int]]`, *optional*): the `(height, width)` of each result; the logits'
                (or scores') own size when not given.
            return_segmentation_scores (`bool`, *optional*, defaults to `False`): whether to return each map with
                the scores it was taken from.

        Returns:
            `list[torch.LongTensor]`: one `(height, width)` map of class indices per image; with
            `return_segmentation_scores`, one [`SemanticSegmentationPostProcessorOutput`] per image instead, with
            `segmentation` (that map) and `segmentation_scores` (`(num_classes, height, width)`: calibrated scores,
            or the logits of an output without `score_shift`).
        """
        if isinstance(outputs, torch.Tensor):
            maps, score_shift = outputs, None
        else:
            maps, score_shift = outputs.logits, getattr(outputs, "score_shift", None)
        if isinstance(target_sizes, torch.Tensor):
            target_sizes = target_sizes.tolist()
        if target_sizes is not None and len(target_sizes) != maps.shape[0]:
            raise ValueError(
                f"The number of target sizes ({len(target_sizes)}) is not that of images ({maps.shape[0]})."
            )

        results = []
        for index, image_maps in enumerate(maps):
            image_maps = image_maps[None].float()
            size = tuple(target_sizes[index]) if target_sizes is not None else tuple(image_maps.shape[-2:])
            class_map = segment_in_class_chunks(
                image_maps.shape[1],
                size,
                self.class_scores_function(image_maps, None if score_shift is None else score_shift[index], size),
                keep_class_scores=return_segmentation_scores,
            )
            if return_segmentation_scores:
                results.append(
                    SemanticSegmentationPostProcessorOutput(
                        data={"segmentation": class_map.segmentation, "segmentation_scores": class_map.class_scores}
                    )
                )
            else:
                results.append(class_map.segmentation)
        return results

    def class_scores_function(
        self, maps: torch.Tensor, score_shift: torch.Tensor | None, size: tuple[int, int]
    ) -> Callable[[slice], torch.Tensor]:
        """
        What `post_process_semantic_segmentation` takes one image's classes' scores at `size` from, a few classes
        at a time: calibrated scores (upsampled to `mask_size` for all classes at once, then resized per piece) or,
        without `score_shift`, the logits resized.

        Args:
            maps (`torch.FloatTensor` of shape `(1, num_classes, height, width)`): mask logits or calibrated scores.
            score_shift (`torch.Tensor` of shape `(num_classes,)`, *optional*).

        Returns:
            A function of a `slice` of classes to their `(len(slice), *size)` scores.
        """
        if score_shift is None:
            return lambda classes: upsample_mask_logits(maps[:, classes], size)[0]
        score_shift = score_shift.float()
        if self.mask_size is None:
            return lambda classes: calibrated_scores(maps[:, classes], score_shift[classes], size)[0]
        mask_scores = calibrated_scores(maps, score_shift, (self.mask_size, self.mask_size), self.mask_size)[0]
        return lambda classes: resize_scores(mask_scores[classes], size)


__all__ = ["CascadeClipImageProcessor"]
