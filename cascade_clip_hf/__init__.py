"""Cascade-CLIP for zero-shot semantic segmentation, on Hugging Face transformers."""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForSemanticSegmentation,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_cascade_clip import CascadeClipConfig
from .image_processing_cascade_clip import CascadeClipImageProcessor
from .modeling_cascade_clip import (
    CascadeClipForZeroShotSegmentation,
    CascadeClipPreTrainedModel,
    CascadeClipSegmentationOutput,
)
from .pipeline_cascade_clip import PIPELINE_TASK, CascadeClipZeroShotSegmentationPipeline
from .processing_cascade_clip import CascadeClipProcessor


__version__ = "0.1.0"

AutoConfig.register(CascadeClipConfig.model_type, CascadeClipConfig, exist_ok=True)
AutoModel.register(CascadeClipConfig, CascadeClipForZeroShotSegmentation, exist_ok=True)
AutoModelForSemanticSegmentation.register(CascadeClipConfig, CascadeClipForZeroShotSegmentation, exist_ok=True)
AutoImageProcessor.register(
    CascadeClipConfig, image_processor_classes={"pil": CascadeClipImageProcessor}, exist_ok=True
)
AutoProcessor.register(CascadeClipConfig, CascadeClipProcessor, exist_ok=True)
# Saved models then carry this code and an `auto_map`, for loading with trust_remote_code=True without the package.
CascadeClipConfig.register_for_auto_class()
CascadeClipForZeroShotSegmentation.register_for_auto_class("AutoModelForSemanticSegmentation")
CascadeClipImageProcessor.register_for_auto_class("AutoImageProcessor")
CascadeClipProcessor.register_for_auto_class("AutoProcessor")
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK,
    pipeline_class=CascadeClipZeroShotSegmentationPipeline,
    pt_model=AutoModelForSemanticSegmentation,
    type="multimodal",
)

__all__ = [
    "CascadeClipConfig",
    "CascadeClipForZeroShotSegmentation",
    "CascadeClipImageProcessor",
    "CascadeClipPreTrainedModel",
    "CascadeClipProcessor",
    "CascadeClipSegmentationOutput",
    "CascadeClipZeroShotSegmentationPipeline",
]
