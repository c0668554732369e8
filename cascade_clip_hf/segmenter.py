"""Loading the zero-shot pipeline for a model, as the command line and the demo app use it."""

from pathlib import Path

from .modeling_cascade_clip import CascadeClipForZeroShotSegmentation
from .pipeline_cascade_clip import CascadeClipZeroShotSegmentationPipeline
from .processing_cascade_clip import CascadeClipProcessor


# The tiny toy-world model shipped inside the package (built by examples/build_demo_model.py): the command line's
# default, so that it works offline on a fresh machine. It only knows toy-world scenes, not photos.
DEMO_MODEL = Path(__file__).parent / "demo_model"


def load_segmenter(model_name: str, device: str = "cpu") -> CascadeClipZeroShotSegmentationPipeline:
    """The zero-shot pipeline for a model folder or Hub id; a one-line `ValueError` when it cannot be loaded."""
    try:
        model = CascadeClipForZeroShotSegmentation.from_pretrained(model_name)
        processor = CascadeClipProcessor.from_pretrained(model_name)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0]
        raise ValueError(f"cannot load the model {model_name!r}: {reason}") from error
    return CascadeClipZeroShotSegmentationPipeline(model=model.eval(), processor=processor, device=device)


def vocabulary(segmenter: CascadeClipZeroShotSegmentationPipeline, labels: list[str] | None) -> list[str]:
    """The class names a call segments into: `labels`, or the model's default vocabulary."""
    return labels if labels is not None else segmenter.model.config.class_names
