"""Pictures of segmentations: class colours, an overlay on the image, and a legend of the classes present."""

import colorsys

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont


LEGEND_ROW_HEIGHT = 18
LEGEND_PADDING = 6
BLEND_ROWS = 256


def class_palette(num_classes: int) -> np.ndarray:
    """`(num_classes, 3)` uint8 colours, well apart in hue (golden-ratio steps), the same for every call."""
    hues = (np.arange(num_classes) * 0.618033988749895) % 1.0
    colours = [colorsys.hsv_to_rgb(hue, 0.75 if index % 2 else 0.95, 0.95) for index, hue in enumerate(hues)]
    return (np.array(colours, dtype=np.float64).reshape(-1, 3) * 255).round().astype(np.uint8)


def segmentation_from_masks(segments: list[dict], class_names: list[str], size: tuple[int, int]) -> np.ndarray:
    """
    The class-index map of one image from the zero-shot pipeline's `{label, mask}` segments.

    Args:
        size: `(width, height)` of the image, as PIL gives it.

    Returns:
        `np.ndarray` of shape `(height, width)`: indices into `class_names`.
    """
    index_of = {name: index for index, name in enumerate(class_names)}
    segmentation = np.zeros(size[::-1], dtype=np.int64)
    for segment in segments:
        segmentation[np.asarray(segment["mask"]) > 0] = index_of[segment["label"]]
    return segmentation


def class_fractions(segmentation: np.ndarray, class_names: list[str]) -> dict[str, float]:
    """The fraction of the image's pixels each class wins (zero for classes absent), in class order."""
    counts = np.bincount(segmentation.ravel(), minlength=len(class_names))
    return {name: float(count) / segmentation.size for name, count in zip(class_names, counts, strict=True)}


def overlay_with_legend(
    image: PIL.Image.Image,
    segmentation: np.ndarray,
    class_names: list[str],
    alpha: float = 0.5,
    min_side: int = 256,
) -> PIL.Image.Image:
    """
    The image with each pixel tinted by its class's colour, and on its right a legend of the classes present
    (colour, name, share of the pixels), largest first.

    Args:
        segmentation (`np.ndarray` of shape `(height, width)`): indices into `class_names`, at the image's size.
        alpha: weight of the class colours against the image.
        min_side: images whose shorter side is below this are enlarged by a whole factor (each pixel a block),
            so that small images stay legible beside the legend.
    """
    if segmentation.shape != (image.height, image.width):
        raise ValueError(f"The segmentation is {segmentation.shape} but the image is {(image.height, image.width)}.")
    palette = class_palette(len(class_names))
    pixels = np.asarray(image.convert("RGB"))
    blended = np.empty_like(pixels)
    # A band of rows at a time: the float copies stay a few MB for a 12-megapixel photo instead of 600 MB.
    for top in range(0, image.height, BLEND_ROWS):
        rows = slice(top, top + BLEND_ROWS)
        colours = palette[segmentation[rows]].astype(np.float32)
        blended[rows] = ((1 - alpha) * pixels[rows].astype(np.float32) + alpha * colours).round()
    overlay = PIL.Image.fromarray(blended)
    factor = -(-min_side // min(image.size))
    if factor > 1:
        overlay = overlay.resize((image.width * factor, image.height * factor), PIL.Image.Resampling.NEAREST)

    fractions = class_fractions(segmentation, class_names)
    present = [index for index, name in enumerate(class_names) if fractions[name] > 0]
    present.sort(key=lambda index: -fractions[class_names[index]])
    font = PIL.ImageFont.load_default()
    rows = [f"{class_names[index]} {100 * fractions[class_names[index]]:.1f}%" for index in present]
    text_width = max(int(font.getlength(row)) for row in rows)
    legend_width = LEGEND_PADDING * 3 + LEGEND_ROW_HEIGHT + text_width
    height = max(overlay.height, LEGEND_PADDING * 2 + LEGEND_ROW_HEIGHT * len(rows))
    canvas = PIL.Image.new("RGB", (overlay.width + legend_width, height), "white")
    canvas.paste(overlay, (0, 0))
    draw = PIL.ImageDraw.Draw(canvas)
    left = overlay.width + LEGEND_PADDING
    for row_index, (class_index, row) in enumerate(zip(present, rows, strict=True)):
        top = LEGEND_PADDING + row_index * LEGEND_ROW_HEIGHT
        swatch = (left, top + 2, left + LEGEND_ROW_HEIGHT - 4, top + LEGEND_ROW_HEIGHT - 2)
        draw.rectangle(swatch, fill=tuple(int(value) for value in palette[class_index]), outline="black")
        draw.text((left + LEGEND_ROW_HEIGHT + LEGEND_PADDING, top + 3), row, fill="black", font=font)
    return canvas
