"""Pictures of segmentations: class colours, an overlay on the image, and a legend of the classes present."""

import functools
import re

import colorcet
import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
from coloraide import Color


# Glasbey's categorical palette (colorcet's `glasbey`: 256 colours, none near black, white or grey), built greedily so
# that each colour is as far as possible, in a perceptual colour space, from all colours before it: any first k are
# well apart, the first ones most of all.
PALETTE = np.array([list(bytes.fromhex(code[1:])) for code in colorcet.glasbey], dtype=np.uint8)
PALETTE_LAB = np.array([Color("srgb", (rgb / 255).tolist()).convert("lab").coords() for rgb in PALETTE])
# Colours are drawn from at least the palette's first 20 (more when more classes are present), whose least distance
# is CIE76 23.7: room for a colour word to find a colour of its hue, few enough to stay far apart.
COLOUR_CHOICES = 20
# Chromatic words only: the palette has no black, white or grey. Their colours are the CSS colours of those names.
COLOUR_WORDS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "violet", "magenta", "pink", "brown")
# A palette colour has a word's hue when its CIE LCh hue lies within so many degrees of the word's colour's.
COLOUR_WORD_HUE_TOLERANCE = 30.0

# The legend's row height, as a share of the overlay's shorter side, and at least so many pixels.
LEGEND_ROW_SHARE = 1 / 30
LEGEND_MIN_ROW_HEIGHT = 18
# The legend's text is at most this share of the overlay's width; longer names are cut with an ellipsis.
LEGEND_MAX_TEXT_SHARE = 0.5
# Rows shown whatever the overlay's height (a tiny overlay gets a taller canvas rather than an empty legend).
LEGEND_MIN_ROWS = 5
BLEND_ROWS = 256


def colour_word(class_name: str) -> str | None:
    """The first of `COLOUR_WORDS` that is a whole word of `class_name` ("plain Yellow" -> "yellow"), or None."""
    return next((word for word in re.findall(r"[a-z]+", class_name.lower()) if word in COLOUR_WORDS), None)


@functools.cache
def palette_matching(word: str) -> tuple[int, ...]:
    """
    Indices into `PALETTE` of the colours of the CSS colour `word`'s hue (see `COLOUR_WORD_HUE_TOLERANCE`), the
    nearest to it (CIEDE2000) first.
    """
    reference = Color(word)
    reference_hue = reference.convert("lch")["hue"]
    matching = []
    for index, rgb in enumerate(PALETTE.tolist()):
        colour = Color("srgb", [value / 255 for value in rgb])
        hue_difference = abs(colour.convert("lch")["hue"] - reference_hue) % 360
        if min(hue_difference, 360 - hue_difference) <= COLOUR_WORD_HUE_TOLERANCE:
            matching.append((reference.delta_e(colour, method="2000"), index))
    return tuple(index for _, index in sorted(matching))


def class_colours(class_names: list[str], pixel_counts: np.ndarray) -> np.ndarray:
    """
    A colour for each class, distinct among the classes present in one image.

    Each class named with a colour word takes, largest class first, the free palette colour of that word's hue
    nearest to the word's colour, where there is one. The other classes then take, largest first, the free palette
    colour farthest (CIE76) from all colours given so far, as Glasbey built the palette, so the largest classes get
    the most distinct colours. Colours come from the palette's first `COLOUR_CHOICES` (or as many as there are
    classes present); past 256 classes present the palette repeats.

    Args:
        pixel_counts (`np.ndarray` of shape `(num_classes,)`): the pixels each class wins; zero for classes absent.

    Returns:
        `np.ndarray` of shape `(num_classes, 3)`, uint8 RGB; black for the classes absent.
    """
    present = sorted(np.flatnonzero(pixel_counts).tolist(), key=lambda index: (-pixel_counts[index], index))
    choices = min(max(len(present), COLOUR_CHOICES), len(PALETTE))
    # For each palette colour drawn from, its distance to the nearest colour given so far; -1 once given itself.
    distance_to_given = np.full(choices, np.inf)
    colour_of = {}

    def give(class_index: int, palette_index: int) -> None:
        colour_of[class_index] = palette_index
        distances = np.linalg.norm(PALETTE_LAB[:choices] - PALETTE_LAB[palette_index], axis=1)
        np.minimum(distance_to_given, distances, out=distance_to_given)
        distance_to_given[palette_index] = -1

    for class_index in present:
        word = colour_word(class_names[class_index])
        if word is not None:
            free = [index for index in palette_matching(word) if index < choices and distance_to_given[index] >= 0]
            if free:
                give(class_index, free[0])
    for class_index in present:
        if class_index not in colour_of:
            if distance_to_given.max() >= 0:
                give(class_index, int(distance_to_given.argmax()))
            else:
                colour_of[class_index] = len(colour_of) % len(PALETTE)
    colours = np.zeros((len(class_names), 3), dtype=np.uint8)
    for class_index, palette_index in colour_of.items():
        colours[class_index] = PALETTE[palette_index]
    return colours


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


def fitted_text(text: str, font, max_width: int) -> str:
    """`text`, cut and ended with an ellipsis where it is wider than `max_width` pixels in `font` (a PIL font)."""
    if font.getlength(text) <= max_width:
        return text
    while text and font.getlength(text + "…") > max_width:
        text = text[:-1]
    return text + "…"


def legend_rows(class_names: list[str], pixel_counts: np.ndarray, max_rows: int) -> list[tuple[str, str, int | None]]:
    """
    The legend's rows, `(label, share, class index)`: each class whose share of the pixels rounds to at least 0.1%,
    largest first (`("sky", "41.2%", 3)`), and when more than `max_rows` of them, the `max_rows - 1` largest and a
    last row for the rest (`("12 more classes", "3.4%", None)`).

    Args:
        pixel_counts (`np.ndarray` of shape `(num_classes,)`): the pixels each class wins.
    """
    total = pixel_counts.sum()
    shares = [(100 * count / total, index) for index, count in enumerate(pixel_counts.tolist())]
    shown = sorted((row for row in shares if f"{row[0]:.1f}" != "0.0"), key=lambda row: (-row[0], row[1]))
    rows = [(class_names[index], f"{share:.1f}%", index) for share, index in shown]
    if len(rows) <= max_rows:
        return rows
    rest = sum(share for share, _ in shown[max_rows - 1 :])
    return rows[: max_rows - 1] + [(f"{len(shown) - max_rows + 1} more classes", f"{rest:.1f}%", None)]


def overlay_with_legend(
    image: PIL.Image.Image,
    segmentation: np.ndarray,
    class_names: list[str],
    alpha: float = 0.5,
    min_side: int = 256,
) -> PIL.Image.Image:
    """
    The image with each pixel tinted by its class's colour (see `class_colours`), and on its right a legend of the
    classes present (colour, name, share of the pixels), largest first, in rows of a height proportional to the
    image's shorter side. Classes under 0.05% of the pixels are left out of the legend (not of the tint); the legend
    is never taller than the image (the smallest classes then share one row) nor its text wider than half the image.

    Args:
        segmentation (`np.ndarray` of shape `(height, width)`): indices into `class_names`, at the image's size.
        alpha: weight of the class colours against the image, in [0, 1].
        min_side: images whose shorter side is below this are enlarged by a whole factor (each pixel a block),
            so that small images stay legible beside the legend.

    Raises:
        ValueError: the segmentation's size is not the image's, or `alpha` is outside [0, 1].
    """
    if segmentation.shape != (image.height, image.width):
        raise ValueError(f"The segmentation is {segmentation.shape} but the image is {(image.height, image.width)}.")
    if not 0 <= alpha <= 1:
        raise ValueError(f"The overlay's alpha must lie in [0, 1], got {alpha}.")
    pixel_counts = np.bincount(segmentation.ravel(), minlength=len(class_names))
    colours = class_colours(class_names, pixel_counts)
    pixels = np.asarray(image.convert("RGB"))
    blended = np.empty_like(pixels)
    # A band of rows at a time: the float copies stay a few MB for a 12-megapixel photo instead of 600 MB.
    for top in range(0, image.height, BLEND_ROWS):
        rows = slice(top, top + BLEND_ROWS)
        tints = colours[segmentation[rows]].astype(np.float32)
        blended[rows] = ((1 - alpha) * pixels[rows].astype(np.float32) + alpha * tints).round()
    overlay = PIL.Image.fromarray(blended)
    factor = -(-min_side // min(image.size))
    if factor > 1:
        overlay = overlay.resize((image.width * factor, image.height * factor), PIL.Image.Resampling.NEAREST)

    row_height = max(LEGEND_MIN_ROW_HEIGHT, round(min(overlay.size) * LEGEND_ROW_SHARE))
    padding = row_height // 3
    font = PIL.ImageFont.load_default(size=row_height * 2 // 3)
    max_rows = max(LEGEND_MIN_ROWS, (overlay.height - 2 * padding) // row_height)
    rows = legend_rows(class_names, pixel_counts, max_rows)
    max_text_width = max(int(overlay.width * LEGEND_MAX_TEXT_SHARE), row_height * 5)
    texts = [
        f"{fitted_text(label, font, max_text_width - font.getlength(' ' + share))} {share}" for label, share, _ in rows
    ]
    text_width = max((int(font.getlength(text)) for text in texts), default=0)
    legend_width = padding * 2 + row_height + text_width
    height = max(overlay.height, padding * 2 + row_height * len(rows))
    canvas = PIL.Image.new("RGB", (overlay.width + legend_width, height), "white")
    canvas.paste(overlay, (0, 0))
    draw = PIL.ImageDraw.Draw(canvas)
    left = overlay.width + padding
    for row_index, ((_, _, class_index), text) in enumerate(zip(rows, texts, strict=True)):
        top = padding + row_index * row_height
        if class_index is not None:
            swatch = (left, top + padding // 2, left + row_height - padding, top + row_height - padding // 2)
            colour = tuple(int(value) for value in colours[class_index])
            draw.rectangle(swatch, fill=colour, outline="black", width=max(1, row_height // 30))
        draw.text((left + row_height, top + row_height // 2), text, fill="black", font=font, anchor="lm")
    return canvas
