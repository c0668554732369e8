"""Loading a model for inference, as the command line, the demo app and the zero-shot pipeline built here use it."""

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
)
from safetensors import SafetensorError, safe_open
from transformers.utils import logging as transformers_logging

from .configuration_cascade_clip import CascadeClipConfig
from .errors import INPUT_ERRORS, counted, one_line
from .hub import download_from_hub, out_of_reach_reason
from .modeling_cascade_clip import CascadeClipForZeroShotSegmentation
from .pipeline_cascade_clip import CascadeClipZeroShotSegmentationPipeline
from .processing_cascade_clip import CascadeClipProcessor


# The tiny toy-world model shipped inside the package (built by examples/build_demo_model.py): the command line's
# default, so that it works offline on a fresh machine. It only knows toy-world scenes, not photos.
DEMO_MODEL = Path(__file__).parent / "demo_model"
# The number formats a model can be loaded in for inference; float32, the first, is the default, for fidelity to the
# original. Half precision runs on CPU too (torch computes float16 there, slowly where the CPU lacks it natively).
INFERENCE_DTYPES = ("float32", "bfloat16", "float16")
# What runs the model: PyTorch, or ONNX Runtime on an export (see `onnx_runtime.py`), in float32 or int8.
BACKENDS = ("torch", "onnx", "onnx-int8")


def looks_like_a_path(model_name: str) -> bool:
    """Whether a model name is meant as a local folder rather than a Hub id (`org/name`)."""
    return (
        os.path.isabs(model_name)
        or model_name.startswith((".", "~"))
        or model_name.count("/") > 1
        or "\\" in model_name
    )


class ModelLocation(NamedTuple):
    """Where a model named by the user is, found before its weights are read."""

    # What `from_pretrained` takes: the folder, or the Hub id.
    source: str
    # The model's config.json; None when a folder has none.
    config_file: Path | None
    # True when the Hub cannot be reached and its cache holds the model: `from_pretrained` must then read the cache
    # alone, or it would retry each optional file it looks for (about 25 seconds each).
    local_files_only: bool = False


def find_model_config(model_name: str) -> ModelLocation:
    """
    Where a model named by the user is, before its weights are read: a folder, or a Hub id (its `config.json`
    downloaded, or taken from the cache when the Hub cannot be reached).

    Raises:
        ValueError: one line saying why the name cannot be a model here: no such folder, not a Hub id, no such or
            no accessible model on the Hub, the Hub out of reach (offline) with nothing cached, or a file.
    """
    folder = Path(model_name).expanduser()
    if folder.is_file():
        raise ValueError(f"{model_name}: a file; pass the model's folder (with config.json and the weights).")
    if folder.is_dir():
        config_file = folder / "config.json"
        return ModelLocation(str(folder), config_file if config_file.is_file() else None)
    if looks_like_a_path(model_name):
        raise ValueError(f"no model folder {model_name!r}: no such folder.")
    unknown = f"no model folder or Hub id {model_name!r}"
    try:
        config_file, reachable = download_from_hub(model_name, "config.json")
        return ModelLocation(model_name, config_file, local_files_only=not reachable)
    except HFValidationError as error:
        raise ValueError(
            f"{unknown}: no such folder here, and not a Hub id (org/name, of letters, digits, '-', '_' and '.')."
        ) from error
    except GatedRepoError as error:
        raise ValueError(
            f"the Hub model {model_name!r} is gated: accept its conditions on its Hub page, then log in "
            "(`hf auth login` or HF_TOKEN)."
        ) from error
    except RepositoryNotFoundError as error:
        raise ValueError(
            f"{unknown}: no such folder here, and no such model on the Hub (if it is private, log in with "
            "`hf auth login` or HF_TOKEN)."
        ) from error
    except RemoteEntryNotFoundError as error:
        raise ValueError(f"the Hub repository {model_name!r} holds no config.json: it is not a model.") from error
    except LocalEntryNotFoundError as error:
        raise ValueError(
            f"{unknown}: no such folder here, and {out_of_reach_reason()}, with no copy of it in the cache; give a "
            "model folder, or download the model once while online."
        ) from error
    except OSError as error:
        raise ValueError(f"{unknown}: the Hub cannot give it ({one_line(error)}).") from error


def read_model_type(config_file: Path) -> str | None:
    """The `model_type` a model folder's `config.json` names; None when there is no readable one."""
    try:
        return json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def damaged_weights_file(folder: Path) -> Path | None:
    """The first safetensors file of a model folder whose header cannot be read."""
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except (SafetensorError, OSError):
            return path
    return None


def cascade_clip_source(model_name: str) -> ModelLocation:
    """
    Where the Cascade-CLIP model that `model_name` (a folder or a Hub id) names is, once its `config.json` says it
    is one; no weights are read.

    Raises:
        ValueError: one line saying why `model_name` is not a Cascade-CLIP model here: see `find_model_config`, or
            it has no `config.json`, or one of another model type.
    """
    location = find_model_config(model_name)
    if location.config_file is None:
        raise ValueError(
            f"{model_name}: not a model folder (no config.json); pass a folder written by save_pretrained or "
            "`cascade-clip convert`."
        )
    model_type = read_model_type(location.config_file)
    if model_type != CascadeClipConfig.model_type:
        said = f"says model_type {model_type!r}" if model_type else "names no model_type, or cannot be read"
        raise ValueError(f"{model_name}: not a Cascade-CLIP model (its config.json {said}).")
    return location


@contextmanager
def without_loading_bars() -> Iterator[None]:
    """
    Within the block, transformers draws none of its own progress bars, such as the "Loading weights" bar of every
    `from_pretrained`, which the tools would show on every run; downloads from the Hub (huggingface_hub's bars)
    keep theirs.
    """
    transformers_logging.set_tqdm_hook(lambda factory, args, kwargs: factory(*args, **{**kwargs, "disable": True}))
    try:
        yield
    finally:
        transformers_logging.set_tqdm_hook(None)


def load_for_inference(
    model_name: str, dtype: str = "float32"
) -> tuple[CascadeClipForZeroShotSegmentation, CascadeClipProcessor]:
    """
    A model and its processor for inference, loaded strictly: every weight the model needs must be in the files,
    and no other, so that a damaged or foreign checkpoint never segments with random layers.

    Args:
        model_name (`str`): a model folder or a Hub id.
        dtype (`str`): one of `INFERENCE_DTYPES`, the format of the weights and the computation, whatever the
            files hold.

    Returns:
        The model, in evaluation mode, and its processor.

    Raises:
        ValueError: one line naming the model (or the damaged file) and what is wrong, or an unknown `dtype`.
    """
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"unknown dtype {dtype!r} for {model_name}: use one of {', '.join(INFERENCE_DTYPES)}.")
    source, _, local_files_only = cascade_clip_source(model_name)
    try:
        # Mismatched shapes are collected rather than raised, to be refused below with the others in one line.
        with without_loading_bars():
            model, loading_info = CascadeClipForZeroShotSegmentation.from_pretrained(
                source,
                output_loading_info=True,
                ignore_mismatched_sizes=True,
                dtype=dtype,
                local_files_only=local_files_only,
            )
            processor = CascadeClipProcessor.from_pretrained(source, local_files_only=local_files_only)
    except SafetensorError as error:
        damaged = damaged_weights_file(Path(source)) if Path(source).is_dir() else None
        raise ValueError(
            f"{damaged or model_name}: damaged or incomplete weights file ({one_line(error)})."
        ) from error
    except INPUT_ERRORS as error:
        raise ValueError(f"cannot load the model {model_name!r}: {one_line(error)}") from error
    problems = {
        "lack": loading_info["missing_keys"],
        "hold unexpected": loading_info["unexpected_keys"],
        "hold wrongly shaped": loading_info["mismatched_keys"],
    }
    for what, keys in problems.items():
        if keys:
            keys = sorted(key if isinstance(key, str) else key[0] for key in keys)
            raise ValueError(
                f"{model_name}: the weights {what} {counted(len(keys), 'tensor')}, e.g. {keys[:3]}; the file is "
                "incomplete or belongs to another model."
            )
    return model.eval(), processor


def load_segmenter(
    model_name: str, device: str = "cpu", dtype: str = "float32", backend: str = "torch", threads: int | None = None
) -> CascadeClipZeroShotSegmentationPipeline:
    """
    The zero-shot pipeline for a model folder or Hub id in `dtype`, loaded strictly (see `load_for_inference`); with
    an ONNX `backend` (one of `BACKENDS`), for an export folder run by ONNX Runtime with `threads` threads (see
    `onnx_runtime.load_onnx_segmenter`).

    Raises:
        ValueError: for an unknown backend, or a device or dtype that an ONNX backend does not take.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} for {model_name}: use one of {', '.join(BACKENDS)}.")
    if backend != "torch":
        from .onnx_runtime import load_onnx_segmenter

        if (device, dtype) != ("cpu", "float32"):
            raise ValueError(
                f"--backend {backend} runs on the CPU in the export's own precision: leave --device and --dtype at "
                "their defaults."
            )
        return load_onnx_segmenter(model_name, quantized=backend == "onnx-int8", threads=threads)
    model, processor = load_for_inference(model_name, dtype)
    return CascadeClipZeroShotSegmentationPipeline(model=model, processor=processor, device=device)


def vocabulary(segmenter: CascadeClipZeroShotSegmentationPipeline, labels: list[str] | None) -> list[str]:
    """The class names a call segments into: `labels`, or the model's default vocabulary."""
    return labels if labels is not None else segmenter.model.config.class_names
