"""Cascade-CLIP for zero-shot semantic segmentation, on Hugging Face transformers."""

from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, AutoProcessor

from .configuration_cascade_clip import CascadeClipConfig
from .image_processing_cascade_clip import CascadeClipImageProcessor
from .modeling_cascade_clip import (
    CascadeClipForZeroShotSegmentation,
    CascadeClipPreTrainedModel,
    CascadeClipSegmentationOutput,
)
from .processing_cascade_clip import CascadeClipProcessor


__version__ = "0.1.0"

AutoConfig.register(CascadeClipConfig.model_type, CascadeClipConfig, exist_ok=True)
AutoModelForSemanticSegmentation.register(CascadeClipConfig, CascadeClipForZeroShotSegmentation, exist_ok=True)
AutoImageProcessor.register(CascadeClipConfig, image_processor_classes={"pil": CascadeClipImageProcessor}, exist_ok=True)
AutoProcessor.register(CascadeClipConfig, CascadeClipProcessor, exist_ok=True)

__all__ = [
    "CascadeClipConfig",
    "CascadeClipForZeroShotSegmentation",
    "CascadeClipImageProcessor",
    "CascadeClipPreTrainedModel",
    "CascadeClipProcessor",
    "CascadeClipSegmentationOutput",
]
