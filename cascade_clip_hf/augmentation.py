"""The original training augmentation, on albumentations.

mmsegmentation's recipe, step by step: rescale to the (2048, 512) scale times a random ratio in [0.5, 2.0]
(keeping the aspect ratio), random crop in which one class fills at most 75% of the labelled pixels (ten tries),
horizontal flip with probability 0.5, photometric distortion, normalisation, and padding to the crop size (image 0
after normalisation, labels ignore). Three steps have no albumentations twin with the same semantics and are
written here as albumentations transforms; the rest are albumentations' own.
"""

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np

from .image_processing_cascade_clip import ORIGINAL_IMAGE_MEAN, ORIGINAL_IMAGE_STD, keep_ratio_size
from .labels import IGNORE_INDEX


class RandomRescale(A.DualTransform):
    """Rescales keeping the aspect ratio to `scale` times a ratio drawn uniformly from `ratio_range`."""

    def __init__(self, scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0), p=1.0):
        super().__init__(p=p)
        self.scale = scale
        self.ratio_range = ratio_range

    def get_params_dependent_on_data(self, params, data):
        ratio = self.py_random.uniform(*self.ratio_range)
        height, width = data["image"].shape[:2]
        long_edge, short_edge = int(max(self.scale) * ratio), int(min(self.scale) * ratio)
        return {"size": keep_ratio_size(height, width, short_edge, long_edge)}

    def apply(self, img, size, **params):
        return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def apply_to_mask(self, mask, size, **params):
        return cv2.resize(mask, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)

    def get_transform_init_args_names(self):
        return ("scale", "ratio_range")


class CategoryBalancedRandomCrop(A.DualTransform):
    """
    Random crop of at most `crop_size` on each side, redrawn (up to ten times) until the crop holds more than one
    class and no class fills `cat_max_ratio` or more of its labelled pixels.
    """

    def __init__(self, crop_size: int = 512, cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX, p=1.0):
        super().__init__(p=p)
        self.crop_size = crop_size
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    @property
    def targets_as_params(self):
        return ["mask"]

    def draw_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        top = self.py_random.randint(0, max(height - self.crop_size, 0))
        left = self.py_random.randint(0, max(width - self.crop_size, 0))
        return top, min(top + self.crop_size, height), left, min(left + self.crop_size, width)

    def get_params_dependent_on_data(self, params, data):
        mask = data["mask"]
        box = self.draw_box(*mask.shape[:2])
        if self.cat_max_ratio < 1:
            for _ in range(10):
                values, counts = np.unique(mask[box[0] : box[1], box[2] : box[3]], return_counts=True)
                counts = counts[values != self.ignore_index]
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                box = self.draw_box(*mask.shape[:2])
        return {"box": box}

    def apply(self, img, box, **params):
        return img[box[0] : box[1], box[2] : box[3]]

    def apply_to_mask(self, mask, box, **params):
        return mask[box[0] : box[1], box[2] : box[3]]

    def get_transform_init_args_names(self):
        return ("crop_size", "cat_max_ratio", "ignore_index")


class PhotometricDistortion(A.ImageOnlyTransform):
    """
    mmsegmentation's photometric distortion on 8-bit RGB: each with probability 0.5, a brightness shift in
    [-32, 32], a contrast factor in [0.5, 1.5] (randomly before or after the colour steps), a saturation factor in
    [0.5, 1.5] and a hue shift in [-18, 17] on OpenCV's 0-180 hue scale; every step rounds back to 8 bits.
    """

    def __init__(
        self, brightness_delta=32, contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta=18, p=1.0
    ):
        super().__init__(p=p)
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def get_params(self):
        draw = self.py_random

        def maybe(value_fn):
            return value_fn() if draw.random() < 0.5 else None

        return {
            "brightness": maybe(lambda: draw.uniform(-self.brightness_delta, self.brightness_delta)),
            "contrast_first": draw.random() < 0.5,
            "contrast": maybe(lambda: draw.uniform(*self.contrast_range)),
            "saturation": maybe(lambda: draw.uniform(*self.saturation_range)),
            "hue": maybe(lambda: draw.randint(-self.hue_delta, self.hue_delta - 1)),
        }

    @staticmethod
    def affine(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def apply(self, img, brightness, contrast_first, contrast, saturation, hue, **params):
        if brightness is not None:
            img = self.affine(img, beta=brightness)
        if contrast_first and contrast is not None:
            img = self.affine(img, alpha=contrast)
        if saturation is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[..., 1] = self.affine(hsv[..., 1], alpha=saturation)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if hue is not None:
            hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + hue) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first and contrast is not None:
            img = self.affine(img, alpha=contrast)
        return img

    def get_transform_init_args_names(self):
        return ("brightness_delta", "contrast_range", "saturation_range", "hue_delta")


def training_augmentation(
    crop_size: int = 512,
    scale: tuple[int, int] = (2048, 512),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    image_mean: Sequence[float] = ORIGINAL_IMAGE_MEAN,
    image_std: Sequence[float] = ORIGINAL_IMAGE_STD,
    ignore_index: int = IGNORE_INDEX,
    photometric_distortion: bool = True,
) -> A.Compose:
    """
    The original training pipeline. Call it as `pipeline(image=rgb_uint8, mask=labels_uint16)`; it returns a
    normalised float32 image and its labels, both `crop_size` x `crop_size`. `photometric_distortion=False` drops
    the brightness, contrast, saturation and hue jitter, for data whose classes are told apart by colour.
    """
    return A.Compose(
        [
            RandomRescale(scale=scale, ratio_range=ratio_range),
            CategoryBalancedRandomCrop(crop_size=crop_size, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index),
            A.HorizontalFlip(p=0.5),
            PhotometricDistortion(p=1.0 if photometric_distortion else 0.0),
            A.Normalize(mean=image_mean, std=image_std, max_pixel_value=1.0),
            A.PadIfNeeded(
                min_height=crop_size,
                min_width=crop_size,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
            ),
        ]
    )
