"""The Hugging Face Inference Endpoints handler: a deployed Cascade-CLIP answering requests of the form

    {"inputs": <one image>, "parameters": {"candidate_labels": ["car", "road", "sky"]}}

with the zero-shot pipeline's segments, `[{"label": "road", "score": 0.58, "mask": <base64 PNG>}, ...]`.

This file is saved beside every model (see `CascadeClipForZeroShotSegmentation.save_pretrained`) and runs from the
model's repository, where this package is not installed: it imports nothing from its own package and loads the
model, the processor and the pipeline saved beside it with `trust_remote_code=True`. Its image decoding repeats the
package's guards (`image_processing_cascade_clip.open_image`: a full decode, decompression bombs refused); the
processor's `read_image`, reached through the pipeline, turns the image upright and converts its mode.
"""

import base64
import binascii
import http.client
import io
import math
import os
import re
import time
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import PIL.Image
import torch
from transformers import pipeline
from transformers.utils import logging


logger = logging.get_logger(__name__)

# The endpoint's settings, from its environment. Image URLs are off by default: a server that fetches whatever URL
# a request names can be made to reach addresses only it can reach.
ALLOW_URLS_VARIABLE = "CASCADE_CLIP_ALLOW_URLS"
MAX_IMAGE_BYTES_VARIABLE = "CASCADE_CLIP_MAX_IMAGE_BYTES"
URL_TIMEOUT_VARIABLE = "CASCADE_CLIP_URL_TIMEOUT"
MAX_IMAGE_PIXELS_VARIABLE = "CASCADE_CLIP_MAX_IMAGE_PIXELS"
MAX_LABELS_VARIABLE = "CASCADE_CLIP_MAX_LABELS"
DEFAULT_MAX_IMAGE_BYTES = 20 * 2**20
# A small file can decode to a huge image: pixels are bounded apart from bytes (40 megapixels take 120 MB as RGB).
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
DEFAULT_MAX_LABELS = 1000
DEFAULT_URL_TIMEOUT_SECONDS = 10.0
DOWNLOAD_CHUNK_BYTES = 2**16
# The pipeline options a request may set, besides `candidate_labels`.
WINDOW_PARAMETERS = ("crop_size", "stride", "window_batch_size")
IMAGE_FORMS = "raw bytes, a base64 string, a data: URL or an http(s) URL"


class RequestError(ValueError):
    """A request the endpoint cannot serve; the message says what is wrong and how to fix it."""


class HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to `http(s)://` URLs only (urllib also follows them to `ftp://`)."""

    def redirect_request(self, request, response, code, message, headers, new_url):
        if urllib.parse.urlsplit(new_url).scheme.lower() not in ("http", "https"):
            raise RequestError(f"the image URL redirects to {new_url!r}, which is not http(s); send the image itself")
        return super().redirect_request(request, response, code, message, headers, new_url)


def environment_number(name: str, default: float, kind: type) -> int | float:
    """The positive number the environment variable `name` holds, or `default` when it is unset or empty."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={text!r} is not a positive {kind.__name__}: set a number such as {default}")
    return value


def download(url: str, timeout: float, max_bytes: int) -> bytes:
    """
    The bytes at an `http(s)://` URL, read in chunks and refused as soon as they pass `max_bytes` or `timeout`
    seconds have passed (`timeout` also bounds each wait of the connection).

    Raises:
        RequestError: the URL cannot be downloaded, redirects elsewhere than http(s), is too large or too slow.
    """
    opener = urllib.request.build_opener(HttpOnlyRedirects)
    deadline = time.monotonic() + timeout
    chunks, size = [], 0
    try:
        with opener.open(url, timeout=timeout) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise RequestError(too_large(max_bytes))
            # read1 returns what has arrived, at most one wait: a server sending a byte at a time meets the deadline.
            while chunk := response.read1(DOWNLOAD_CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise RequestError(too_large(max_bytes))
                if time.monotonic() > deadline:
                    raise RequestError(f"the image URL took more than {timeout:g} s; send the image itself")
                chunks.append(chunk)
    except (OSError, http.client.HTTPException) as error:
        raise RequestError(f"cannot download the image URL ({one_line(error)}); check it, or send the image itself")
    return b"".join(chunks)


def too_large(max_bytes: int) -> str:
    return f"the image is over this endpoint's limit of {max_bytes} bytes ({MAX_IMAGE_BYTES_VARIABLE}); send less"


def check_pixels(image: PIL.Image.Image, max_pixels: int) -> None:
    """Refuses an image of more than `max_pixels` pixels (from its size alone: a file's header, before decoding)."""
    width, height = image.size
    if width * height > max_pixels:
        raise RequestError(
            f"the image is {width}x{height} pixels, over this endpoint's limit of {max_pixels} pixels "
            f"({MAX_IMAGE_PIXELS_VARIABLE}); send a smaller one"
        )


def decode_image(data: bytes, max_pixels: int) -> PIL.Image.Image:
    """
    Opens and fully decodes an image file's bytes, so that a truncated or corrupt one fails here.

    Raises:
        RequestError: the bytes are not an image PIL reads, or its header claims more than `max_pixels` pixels or
            more than `PIL.Image.MAX_IMAGE_PIXELS` (a possible decompression bomb), refused before they are
            allocated.
    """
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice as many, and would then allocate them all.
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(io.BytesIO(data)) as image:
                check_pixels(image, max_pixels)
                image.load()
                return image.copy()
    except (PIL.Image.DecompressionBombWarning, PIL.Image.DecompressionBombError) as error:
        raise RequestError(f"the image was refused as a possible decompression bomb ({error}); send a smaller one")
    except (OSError, SyntaxError, ValueError) as error:
        raise RequestError(
            f"inputs is not a readable image ({one_line(error)}); send a PNG, JPEG or other image as {IMAGE_FORMS}"
        )


def decode_base64(text: str, max_bytes: int) -> bytes:
    """The bytes a base64 string encodes (line breaks and spaces allowed), refused above `max_bytes`."""
    text = "".join(text.split())
    if len(text) > (max_bytes // 3 + 1) * 4:  # refused before decoding: base64 holds 3 bytes in 4 characters
        raise RequestError(too_large(max_bytes))
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"inputs is not valid base64 ({one_line(error)}); send the image as {IMAGE_FORMS}")
    if len(data) > max_bytes:
        raise RequestError(too_large(max_bytes))
    return data


# How Python shows an object that has no text of its own, e.g. PIL naming the in-memory file it could not read.
OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


def one_line(error: BaseException) -> str:
    """What `error` says, on one line, without object reprs (which tell a caller nothing)."""
    return " ".join(OBJECT_REPR.sub("", str(error)).split()) or type(error).__name__


def described(value) -> str:
    """A request's value as an error shows it: short plain values as they are, others by their type."""
    if value is None or isinstance(value, (bool, int, float)) or (isinstance(value, str) and len(value) <= 40):
        return repr(value)
    return f"a {type(value).__name__}"


def png_base64(mask: PIL.Image.Image) -> str:
    """A mask as the base64 text of a PNG file."""
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class EndpointHandler:
    """
    Serves a Cascade-CLIP model on Hugging Face Inference Endpoints (and anything else that calls the same
    contract): one image per request, segmented into the request's `candidate_labels` or, without them, into the
    model's default vocabulary, with the original's test-time path (resize, sliding window).

    Settings, from the environment: `CASCADE_CLIP_ALLOW_URLS=1` lets requests name image URLs (off by default),
    fetched within `CASCADE_CLIP_URL_TIMEOUT` seconds (default 10); `CASCADE_CLIP_MAX_IMAGE_BYTES` bounds an image
    file's size, however it is sent (default 20 MiB), `CASCADE_CLIP_MAX_IMAGE_PIXELS` its width times height,
    PIL images included (default 40,000,000; PIL's own decompression-bomb limit applies to files too), and
    `CASCADE_CLIP_MAX_LABELS` the number of `candidate_labels` (default 1000).

    Args:
        path (`str`): the model's folder (the endpoint passes the repository's); this file's folder by default.

    Raises:
        ValueError: an environment setting is not a positive number.
        OSError: the folder holds no model.
    """

    def __init__(self, path: str = ""):
        self.allow_urls = os.environ.get(ALLOW_URLS_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")
        self.max_image_bytes = int(environment_number(MAX_IMAGE_BYTES_VARIABLE, DEFAULT_MAX_IMAGE_BYTES, int))
        self.url_timeout = environment_number(URL_TIMEOUT_VARIABLE, DEFAULT_URL_TIMEOUT_SECONDS, float)
        self.max_image_pixels = int(environment_number(MAX_IMAGE_PIXELS_VARIABLE, DEFAULT_MAX_IMAGE_PIXELS, int))
        self.max_labels = int(environment_number(MAX_LABELS_VARIABLE, DEFAULT_MAX_LABELS, int))
        self.segmenter = pipeline(
            "zero-shot-image-segmentation",
            model=str(path or Path(__file__).parent),
            trust_remote_code=True,
            device="cuda" if torch.cuda.is_available() else "cpu",
        )

    def __call__(self, data: dict) -> list[dict] | dict:
        """
        Args:
            data (`dict`): `inputs`, one image: raw bytes, a base64 string, a data: URL, an http(s) URL, or a PIL
                image (what the inference toolkit makes of a request whose body is an image file); `parameters`
                (*optional*): `candidate_labels` (a list of class names; the model's default vocabulary without
                it), `crop_size`, `stride` and `window_batch_size` (positive integers, the sliding window's; the
                model's defaults without them).

        Returns:
            `list[dict]`: one `{"label": str, "score": float, "mask": str}` per class that wins at least one pixel;
            `mask` is the base64 text of a PNG (mode L, the image's upright size, 255 where the class wins, 0
            elsewhere) and `score` the class's mean calibrated score over its mask. A request that cannot be
            served gets `{"error": "<what is wrong and how to fix it>"}` instead.
        """
        try:
            if not isinstance(data, dict) or "inputs" not in data:
                raise RequestError('the request has no "inputs": send {"inputs": <image>, "parameters": {...}}')
            options = self.read_parameters(data.get("parameters"))
            image = self.read_image(data["inputs"])
            segments = self.segmenter(image, **options)
        except ValueError as error:
            return {"error": one_line(error)}
        except Exception as error:
            logger.exception("Segmentation failed")
            return {
                "error": f"segmentation failed ({type(error).__name__}: {one_line(error)}); see the endpoint's logs"
            }
        return [
            {"label": segment["label"], "score": segment["score"], "mask": png_base64(segment["mask"])}
            for segment in segments
        ]

    def read_image(self, inputs) -> PIL.Image.Image:
        """The image a request's `inputs` holds; never a local file, whatever the string says."""
        if isinstance(inputs, PIL.Image.Image):
            check_pixels(inputs, self.max_image_pixels)
            return inputs
        if isinstance(inputs, (bytes, bytearray, memoryview)):
            if len(inputs) > self.max_image_bytes:
                raise RequestError(too_large(self.max_image_bytes))
            return decode_image(bytes(inputs), self.max_image_pixels)
        if not isinstance(inputs, str):
            raise RequestError(f"inputs must be one image, as {IMAGE_FORMS}; got {type(inputs).__name__}")
        text = inputs.strip()
        # Base64 holds no colon: any string with one names a scheme.
        prefix, colon, _ = text.partition(":")
        scheme = prefix.lower() if colon else ""
        if scheme == "data":
            header, _, payload = text.partition(",")
            if not header.lower().endswith(";base64"):
                raise RequestError("a data: URL in inputs must be base64, as in data:image/png;base64,<data>")
            return decode_image(decode_base64(payload, self.max_image_bytes), self.max_image_pixels)
        if scheme in ("http", "https"):
            if not self.allow_urls:
                raise RequestError(
                    f"this endpoint does not fetch image URLs: send the image itself, or set {ALLOW_URLS_VARIABLE}=1 "
                    "in the endpoint's environment"
                )
            return decode_image(download(text, self.url_timeout, self.max_image_bytes), self.max_image_pixels)
        if scheme:
            raise RequestError(f"inputs starts with {prefix[:20]!r}: send the image as {IMAGE_FORMS}")
        return decode_image(decode_base64(text, self.max_image_bytes), self.max_image_pixels)

    def read_parameters(self, parameters) -> dict:
        """The pipeline options of a request's `parameters`, checked."""
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict):
            raise RequestError(f"parameters must be an object, got {type(parameters).__name__}")
        not_names = [key for key in parameters if not isinstance(key, str)]
        if not_names:
            raise RequestError(
                f"parameters must be named by strings, got the key {described(not_names[0])}; use candidate_labels, "
                f"{', '.join(WINDOW_PARAMETERS)}"
            )
        known = ("candidate_labels", *WINDOW_PARAMETERS)
        unknown = sorted(set(parameters) - set(known))
        if unknown:
            raise RequestError(f"unknown parameters {', '.join(unknown)}: this endpoint takes {', '.join(known)}")
        options = {}
        if parameters.get("candidate_labels") is not None:
            labels = parameters["candidate_labels"]
            if not (
                isinstance(labels, list)
                and labels
                and all(isinstance(label, str) and label.strip() for label in labels)
            ):
                raise RequestError(
                    'candidate_labels must be a non-empty list of non-empty class names, e.g. ["car", "road"]; '
                    "leave it out for the model's own classes"
                )
            if len(labels) > self.max_labels:
                raise RequestError(
                    f"{len(labels)} candidate_labels, over this endpoint's limit of {self.max_labels} "
                    f"({MAX_LABELS_VARIABLE}); send fewer"
                )
            options["candidate_labels"] = labels
        elif not self.segmenter.model.config.id2label:
            raise RequestError(
                'this model has no default vocabulary: pass the class names, as in {"inputs": <image>, '
                '"parameters": {"candidate_labels": ["car", "road"]}}'
            )
        for name in WINDOW_PARAMETERS:
            value = parameters.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RequestError(
                    f"{name} must be a positive integer (pixels, or windows per pass), got {described(value)}"
                )
            options[name] = value
        return options
