"""Pixel values and labels pinned bit for bit: the image processor reproduces the original's preprocessing.

The digests were taken from the processor before it was rebuilt on transformers' image-processor conventions
(issue 13); any change to resizing, rounding, normalisation, channel handling or batching shows up here. They
depend on torch's bilinear kernel, so a torch upgrade that changes its arithmetic would show up too.
"""

import hashlib

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor

from cascade_clip_hf import CascadeClipImageProcessor, CascadeClipProcessor
from cascade_clip_hf.segmenter import DEMO_MODEL

from .helpers import EXAMPLES


def pattern(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """Deterministic 8-bit pixels with both smooth runs and sharp jumps (no random generator involved)."""
    rows = np.arange(height, dtype=np.int64)[:, None, None] * 37
    columns = np.arange(width, dtype=np.int64)[None, :, None] * 11
    planes = np.arange(channels, dtype=np.int64)[None, None, :] * 71
    values = rows + columns + planes + seed
    return ((values * values // 7) % 256).astype(np.uint8)


def scene(index: int) -> PIL.Image.Image:
    return PIL.Image.open(EXAMPLES / "scenes" / f"scene-{index}.png")


def digest(array) -> str:
    """`dtype shape sha256-prefix` of an array's bytes."""
    array = array.numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    array = np.ascontiguousarray(array)
    return f"{array.dtype} {tuple(array.shape)} {hashlib.sha256(array.tobytes()).hexdigest()[:16]}"


def single_image_cases() -> dict:
    rgb = pattern(480, 640, 3)
    gray = pattern(300, 200, 1, seed=5)[..., 0]
    palette = PIL.Image.fromarray(pattern(90, 120, 3, seed=9)).quantize(16)
    return {
        "numpy RGB 480x640 (upscaled)": rgb,
        "PIL L 300x200": PIL.Image.fromarray(gray),
        "PIL RGBA 100x150": PIL.Image.fromarray(pattern(100, 150, 4, seed=2)),
        "PIL P 90x120": palette,
        "PIL I;16 50x70": PIL.Image.fromarray(pattern(50, 70, 1, seed=3)[..., 0].astype(np.uint16) * 257),
        "numpy float [0, 1] 64x48": pattern(64, 48, 3, seed=4) / 255.0,
        "torch CHW 33x47": torch.from_numpy(pattern(33, 47, 3, seed=6)).permute(2, 0, 1),
        "numpy RGB 1000x3000 (downscaled)": pattern(1000, 3000, 3, seed=7),
        "scene-0": scene(0),
    }


PINNED_DEFAULT = {
    "numpy RGB 480x640 (upscaled)": "float32 (1, 3, 512, 683) 79112d9124d9ec01",
    "PIL L 300x200": "float32 (1, 3, 768, 512) 025f43a798ebe239",
    "PIL RGBA 100x150": "float32 (1, 3, 512, 768) f08711fb6a9b7734",
    "PIL P 90x120": "float32 (1, 3, 512, 683) f8c88850a0d78d47",
    "PIL I;16 50x70": "float32 (1, 3, 512, 717) 26bc6774ad7be89a",
    "numpy float [0, 1] 64x48": "float32 (1, 3, 683, 512) 399d596162897c50",
    "torch CHW 33x47": "float32 (1, 3, 512, 729) d19e5e5ebafd53b5",
    "numpy RGB 1000x3000 (downscaled)": "float32 (1, 3, 512, 1536) 90ad1be879f8289d",
    "scene-0": "float32 (1, 3, 512, 512) 5e366f10627aab75",
}


@pytest.mark.parametrize("case", list(PINNED_DEFAULT))
def test_default_pixel_values_are_pinned(case):
    pixel_values = CascadeClipImageProcessor()(single_image_cases()[case])["pixel_values"]
    assert digest(pixel_values) == PINNED_DEFAULT[case]


def test_batches_are_pinned():
    processor = CascadeClipImageProcessor()
    same_size = processor([scene(1), scene(2)])["pixel_values"]
    assert digest(same_size) == "float32 (2, 3, 512, 512) a5e19d80a385b25a"
    mixed = processor([scene(3), pattern(40, 90, 3, seed=8)])["pixel_values"]
    assert isinstance(mixed, list)
    assert [digest(image) for image in mixed] == [
        "float32 (3, 512, 512) 04e89de3b31684df",
        "float32 (3, 512, 1152) efbc0e7131370462",
    ]
    as_numpy = processor([scene(1), scene(2)], return_tensors="np")["pixel_values"]
    assert digest(as_numpy) == digest(same_size)


def test_labels_are_pinned():
    labels = pattern(45, 60, 1, seed=11)[..., 0] % 6
    image = pattern(45, 60, 3, seed=12)
    batch = CascadeClipImageProcessor()(image, segmentation_maps=labels)
    assert digest(batch["labels"]) == "int64 (1, 512, 683) a6ca3a3a5c0984ee"
    reduced = CascadeClipImageProcessor(do_reduce_labels=True)(image, segmentation_maps=labels)
    assert digest(reduced["labels"]) == "int64 (1, 512, 683) c59bee3474070278"
    assert digest(reduced["pixel_values"]) == digest(batch["pixel_values"])


def test_saved_processors_are_pinned():
    """The shipped demo model's processor_config.json (saved before issue 13) and a fixed size."""
    demo = AutoImageProcessor.from_pretrained(DEMO_MODEL)
    assert type(demo) is CascadeClipImageProcessor
    assert digest(demo(scene(0))["pixel_values"]) == "float32 (1, 3, 64, 64) a34cacc978a98322"
    assert digest(demo(pattern(100, 37, 3, seed=13))["pixel_values"]) == "float32 (1, 3, 173, 64) c2aab3a3e6b049cc"
    fixed = CascadeClipImageProcessor(size={"height": 40, "width": 24})
    assert digest(fixed(pattern(10, 90, 3, seed=14))["pixel_values"]) == "float32 (1, 3, 40, 24) e0628feee80621a5"


def test_the_shipped_processor_is_pinned():
    """The demo model's processor (saved before issue 13): images, class prompts and seen classes together."""
    processor = CascadeClipProcessor.from_pretrained(DEMO_MODEL)
    inputs = processor(images=[scene(2), scene(3)], text=["plain blue", "sand", "striped red", "checked yellow"])
    assert sorted(inputs) == ["attention_mask", "input_ids", "pixel_values", "seen_class_mask"]
    assert {key: digest(value) for key, value in inputs.items()} == {
        "pixel_values": "float32 (2, 3, 64, 64) 8684fbd5f1e3229d",
        "input_ids": "int64 (4, 3, 7) b615962b9e9b78bb",
        "attention_mask": "int64 (4, 3, 7) 702f5776cbc0628b",
        "seen_class_mask": "bool (4,) 76cc5805dab9b4ea",
    }
