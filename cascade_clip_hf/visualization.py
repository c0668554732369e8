"""Pictures of segmentations: class colours, an overlay on the image, and a legend of the classes present."""

import functools
import importlib.util
import itertools
import re
from pathlib import Path

import colorcet
import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
from coloraide import Color
from coloraide.css import color_names


# Glasbey's categorical palette (colorcet's `glasbey`: 256 colours, none near black, white or grey), built greedily so
# that each colour is as far as possible, in a perceptual colour space, from all colours before it: any first k are
# well apart, the first ones most of all.
PALETTE = np.array([list(bytes.fromhex(code[1:])) for code in colorcet.glasbey], dtype=np.uint8)
# Colours of classes not named with a colour word are drawn from at least the palette's first 20 (more when more
# classes are present), whose least distance is 0.115 in OKLab.
COLOUR_CHOICES = 20
# No two colours given in one image are closer than this in OKLab (Euclidean), where any colour is left to give.
# OKLab, not CIELAB: CIELAB puts blues that look alike far apart (#0343df and #1626ff: CIE76 32, CIEDE2000 6.6).
MIN_COLOUR_DISTANCE = 0.1
# The colours people most often call by the eleven basic colour terms (Berlin and Kay), from the xkcd colour survey
# (Munroe, 2010); any other CSS colour name in a class name ("gold", "navy", "sky blue") stands for its CSS colour.
BASIC_COLOURS = {
    "red": "#e50000", "orange": "#f97306", "yellow": "#ffff14", "green": "#15b01a", "blue": "#0343df",
    "purple": "#7e1e9c", "pink": "#ff81c0", "brown": "#653700", "grey": "#929591", "black": "#000000",
    "white": "#ffffff",
}  # fmt: skip
COLOUR_ALIASES = {"gray": "grey"}
# A colour stands for a chromatic colour word when its OKLCh hue lies within so many degrees of the word's colour's,
# with at least this share of its chroma: of the same hue, and not greyish.
HUE_TOLERANCE = 12.0
MIN_CHROMA_SHARE = 0.5
# Below this OKLCh chroma a colour is neutral (black, white, greys, "silver"): only greys stand for it.
NEUTRAL_CHROMA = 0.03
# The greys, black and white (CIELAB L* 0 to 100, 25 apart) that a class named with a colour word takes when no
# colour of the word is far enough from the colours given: unhued, so that they never contradict the name.
NEUTRALS = np.array(
    [
        [round(Color("lab", [lightness, 0, 0]).convert("srgb").fit()["red"] * 255)] * 3
        for lightness in (0, 25, 50, 75, 100)
    ],
    dtype=np.uint8,
)

# The legend's row height, as a share of the overlay's shorter side, and at least so many pixels.
LEGEND_ROW_SHARE = 1 / 30
LEGEND_MIN_ROW_HEIGHT = 18
# The legend's text is at most this share of the overlay's width; longer names are cut with an ellipsis.
LEGEND_MAX_TEXT_SHARE = 0.5
# Rows shown whatever the overlay's height (a tiny overlay gets a taller canvas rather than an empty legend).
LEGEND_MIN_ROWS = 5
BLEND_ROWS = 256
# The legend's font: DejaVu Sans (Latin with accents, Greek, Cyrillic and more), from the system's fonts or the copy
# matplotlib ships. Pillow's built-in font, used when neither is there, has unaccented Latin letters only.
LEGEND_FONT = "DejaVuSans.ttf"


def colour_word(class_name: str) -> str | None:
    """
    The first colour name in `class_name`: a basic colour term or a CSS colour name, of one word or two written
    apart ("plain Yellow" -> "yellow", "sky blue" -> "skyblue", "light gray" -> "lightgray"); None without one.
    """
    words = re.findall(r"[a-z]+", class_name.lower())
    for first, second in itertools.zip_longest(words, words[1:], fillvalue=""):
        for candidate in (first + second, first):
            word = COLOUR_ALIASES.get(candidate, candidate)
            if word in BASIC_COLOURS or (color_names.has_name(word) and word != "transparent"):
                return word
    return None


def converted(rgb: np.ndarray, space: str) -> np.ndarray:
    """uint8 sRGB colours, `(n, 3)`, as coordinates in the colour space `space` (coloraide's name: "lab", "oklab")."""
    return np.array([Color("srgb", (colour / 255).tolist()).convert(space).coords() for colour in rgb]).reshape(-1, 3)


def word_colour(word: str) -> np.ndarray:
    """The colour, uint8 RGB of shape `(3,)`, that the colour name `word` (see `colour_word`) stands for."""
    colour = Color(BASIC_COLOURS.get(word, word)).convert("srgb").fit()
    return np.array([round(value * 255) for value in colour.coords()], dtype=np.uint8)


PALETTE_OKLAB = converted(PALETTE, "oklab")
NEUTRALS_OKLAB = converted(NEUTRALS, "oklab")


def hue_and_chroma(oklab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OKLCh hue (degrees) and chroma of OKLab colours `(n, 3)`."""
    return np.degrees(np.arctan2(oklab[:, 2], oklab[:, 1])), np.hypot(oklab[:, 1], oklab[:, 2])


@functools.cache
def word_candidates(word: str) -> tuple[np.ndarray, np.ndarray]:
    """
    The colours a class named with the colour name `word` may take, in order of preference: the word's own colour,
    then the palette's colours that could be called by the word, the nearest (OKLab) first, then the neutral greys,
    the nearest first. A palette colour could be called by the word when it is nearer to the word's colour than to
    any other basic colour term's and, for a chromatic word, of its hue (`HUE_TOLERANCE`) and not greyish
    (`MIN_CHROMA_SHARE`); for a neutral word, when it is neutral too (there are none: Glasbey left them out).

    Returns:
        The candidates as uint8 RGB and as OKLab coordinates, each `np.ndarray` of shape `(num_candidates, 3)`.
    """
    reference = word_colour(word)
    reference_oklab = converted(reference[None], "oklab")
    prototypes = converted(np.array([word_colour(other) for other in BASIC_COLOURS if other != word]), "oklab")
    to_reference = np.linalg.norm(PALETTE_OKLAB - reference_oklab, axis=1)
    to_prototypes = np.linalg.norm(PALETTE_OKLAB[:, None] - prototypes[None], axis=-1).min(axis=1)
    (reference_hue,), (reference_chroma,) = hue_and_chroma(reference_oklab)
    hue, chroma = hue_and_chroma(PALETTE_OKLAB)
    if reference_chroma < NEUTRAL_CHROMA:
        fitting = chroma < NEUTRAL_CHROMA
    else:
        hue_difference = np.abs((hue - reference_hue + 180) % 360 - 180)
        fitting = (hue_difference <= HUE_TOLERANCE) & (chroma >= MIN_CHROMA_SHARE * reference_chroma)
    matching = np.flatnonzero((to_reference <= to_prototypes) & fitting)
    matching = matching[np.argsort(to_reference[matching], kind="stable")]
    neutral_order = np.argsort(np.linalg.norm(NEUTRALS_OKLAB - reference_oklab, axis=1), kind="stable")
    candidates = (reference[None], PALETTE[matching], NEUTRALS[neutral_order])
    candidates_oklab = (reference_oklab, PALETTE_OKLAB[matching], NEUTRALS_OKLAB[neutral_order])
    return np.concatenate(candidates), np.concatenate(candidates_oklab)


def class_colours(class_names: list[str], pixel_counts: np.ndarray) -> np.ndarray:
    """
    A colour for each class, distinct among the classes present in one image, and while the shades of a colour
    named in a class name last, one that stands for it.

    Classes named with a colour word (see `colour_word`) go first, largest first: each takes the first of its
    word's candidates (its own colour, then palette colours of its hue, then greys; see `word_candidates`) that is
    at least `MIN_COLOUR_DISTANCE` from all colours given. The other classes, and those whose word's candidates are
    all nearer than that to colours given (more classes of one colour than it has distinct shades), then take,
    largest first, the palette colour farthest (OKLab) from all colours given, as Glasbey built the palette, so
    that the largest classes get the most distinct colours: distinct comes before the named hue. Their colours come
    from the palette's first `COLOUR_CHOICES` (or as many as there are classes present); past 256 classes present,
    the palette repeats.

    Args:
        pixel_counts (`np.ndarray` of shape `(num_classes,)`): the pixels each class wins; zero for classes absent.

    Returns:
        `np.ndarray` of shape `(num_classes, 3)`, uint8 RGB; black for the classes absent.
    """
    present = sorted(np.flatnonzero(pixel_counts).tolist(), key=lambda index: (-pixel_counts[index], index))
    colours = np.zeros((len(class_names), 3), dtype=np.uint8)
    given_oklab = np.empty((0, 3))

    def give(class_index: int, rgb: np.ndarray, oklab: np.ndarray) -> None:
        nonlocal given_oklab
        colours[class_index] = rgb
        given_oklab = np.vstack([given_oklab, oklab[None]])

    def distance_to_given(candidates_oklab: np.ndarray) -> np.ndarray:
        if not len(given_oklab):
            return np.full(len(candidates_oklab), np.inf)
        return np.linalg.norm(candidates_oklab[:, None] - given_oklab[None], axis=-1).min(axis=1)

    # Largest first: the classes without a colour word, and those whose word's colours are all too near others.
    unmatched = []
    for class_index in present:
        word = colour_word(class_names[class_index])
        if word is None:
            unmatched.append(class_index)
            continue
        candidates, candidates_oklab = word_candidates(word)
        far_enough = np.flatnonzero(distance_to_given(candidates_oklab) >= MIN_COLOUR_DISTANCE)
        if len(far_enough):
            give(class_index, candidates[far_enough[0]], candidates_oklab[far_enough[0]])
        else:
            unmatched.append(class_index)
    choices = min(max(len(present), COLOUR_CHOICES), len(PALETTE))
    free = np.ones(choices, dtype=bool)
    for class_index in unmatched:
        if free.any():
            distances = np.where(free, distance_to_given(PALETTE_OKLAB[:choices]), -1)
            palette_index = int(distances.argmax())
            free[palette_index] = False
        else:
            palette_index = len(given_oklab) % len(PALETTE)
        give(class_index, PALETTE[palette_index], PALETTE_OKLAB[palette_index])
    return colours


@functools.cache
def legend_font_file() -> str | None:
    """The path of `LEGEND_FONT`, among the system's fonts or matplotlib's; None when neither has it."""
    try:
        return PIL.ImageFont.truetype(LEGEND_FONT).path
    except OSError:
        pass
    matplotlib = importlib.util.find_spec("matplotlib")
    if matplotlib is not None and matplotlib.submodule_search_locations:
        path = Path(matplotlib.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf" / LEGEND_FONT
        if path.is_file():
            return str(path)
    return None


def legend_font(size: int) -> PIL.ImageFont.FreeTypeFont:
    """The legend's font at `size` pixels (see `LEGEND_FONT`)."""
    path = legend_font_file()
    return PIL.ImageFont.truetype(path, size) if path else PIL.ImageFont.load_default(size=size)


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


def draws(font: PIL.ImageFont.FreeTypeFont, text: str) -> bool:
    """Whether `font` has a glyph for every character of `text` other than spaces."""
    missing = np.asarray(font.getmask("\ue000"))  # private use: no font draws it, so this is the missing-glyph box
    for character in set(text) - {" "}:
        glyph = np.asarray(font.getmask(character))
        if glyph.shape == missing.shape and (glyph == missing).all():
            return False
    return True


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
    font = legend_font(row_height * 2 // 3)
    max_rows = max(LEGEND_MIN_ROWS, (overlay.height - 2 * padding) // row_height)
    # A name in letters the font lacks would be a row of boxes: it is shown by its index into `class_names`.
    rows = [
        (label if index is None or draws(font, label) else f"class {index}", share, index)
        for label, share, index in legend_rows(class_names, pixel_counts, max_rows)
    ]
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
