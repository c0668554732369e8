"""Compares the image processor's resizing with OpenCV's, which the original preprocesses with.

Usage:
    pip install opencv-python-headless
    python examples/compare_resize_with_opencv.py

The original rescales 8-bit images with `cv2.resize(..., interpolation=cv2.INTER_LINEAR)` (mmcv's "bilinear");
the image processor resizes with torch and rounds to 8-bit levels. For random 8-bit images of several sizes, each
resized to the size the processor's default `size` gives it, this prints the largest difference in gray levels
and the share of values that differ. OpenCV is not a dependency of the package; only this check needs it.
"""

import logging

import numpy as np

from cascade_clip_hf.arguments import CommandLineParser
from cascade_clip_hf.errors import configure_logging, run_script
from cascade_clip_hf.image_processing_cascade_clip import CascadeClipImageProcessor


logger = logging.getLogger(__name__)

# (height, width) of the images compared: photo sizes of COCO and ADE20K, portrait and landscape, enlarged to the
# processor's size, and a 12-megapixel phone photo and a small image, shrunk and enlarged.
IMAGE_SIZES = [(480, 640), (427, 640), (640, 480), (375, 500), (3024, 4032), (96, 128)]


def compare_with_opencv(image_sizes=IMAGE_SIZES, seed: int = 0) -> list[dict]:
    """
    For each `(height, width)`: a random 8-bit RGB image resized by the processor and by OpenCV to the same size.

    Returns:
        One `dict` per size: `size` and `resized` (`(height, width)`), `max_difference` (gray levels) and
        `differing_share` (the fraction of values that differ).
    """
    import cv2

    processor = CascadeClipImageProcessor()
    rng = np.random.default_rng(seed)
    results = []
    for height, width in image_sizes:
        image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        ours = processor.resize(image.transpose(2, 0, 1).astype(np.float32), processor.size)
        resized = tuple(ours.shape[-2:])
        theirs = cv2.resize(image, resized[::-1], interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
        difference = np.abs(ours - theirs.astype(np.float32))
        results.append(
            {
                "size": (height, width),
                "resized": resized,
                "max_difference": float(difference.max()),
                "differing_share": float((difference > 0).mean()),
            }
        )
    return results


def main(argv=None) -> None:
    parser = CommandLineParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seeds the random images")
    args = parser.parse_args(argv)
    try:
        import cv2
    except ImportError as error:
        raise ValueError(
            "OpenCV is not installed: pip install opencv-python-headless, then run this again."
        ) from error
    logger.info(f"OpenCV {cv2.__version__}")
    for result in compare_with_opencv(seed=args.seed):
        logger.info(
            f"{result['size'][1]}x{result['size'][0]} -> {result['resized'][1]}x{result['resized'][0]}: "
            f"at most {result['max_difference']:.0f} gray level apart, on {100 * result['differing_share']:.1f}% "
            "of the values"
        )


if __name__ == "__main__":
    configure_logging(level=logging.INFO)
    run_script(main)
