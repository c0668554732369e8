"""transformers' common image-processing suites on `CascadeClipImageProcessor`: `ImageProcessingTestMixin` and
`PostProcessSemanticSegmentationTestMixin`, from the installed transformers' source distribution (see
tests/transformers_suites.py), once with a fixed output size as transformers' SegFormer test runs them and once with
the processor's own keep-ratio size, the original's test-time resize.
"""

import unittest

import torch
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING
from transformers.testing_utils import require_torch, require_vision
from transformers_tests.test_image_processing_common import (
    ImageProcessingTester,
    ImageProcessingTestMixin,
    PostProcessSemanticSegmentationTestMixin,
)

from cascade_clip_hf import CascadeClipConfig
from cascade_clip_hf.image_processing_cascade_clip import ORIGINAL_IMAGE_MEAN, ORIGINAL_IMAGE_STD


# Why a test of the suites does not apply to this processor.
NO_TORCHVISION = (
    "The suite requires image processors of models added after its cutoff to have a torchvision backend. torchvision "
    "does not import beside the CPU build of torch this project runs on (PyPI's torchvision 0.28.0, the build for "
    "torch 2.13.0, fails with `operator torchvision::nms does not exist`), and the PIL/numpy backend is the one that "
    "reproduces the original's preprocessing exactly."
)
LISTS_FOR_MIXED_SIZES = (
    "Kept-ratio images of different sizes are returned as a list, one tensor per image at its own size, as the "
    "original segments each image; the suite expects them padded to the largest. The fixed-size test runs these "
    "calls, and tests/test_processing.py checks the lists."
)


class CascadeClipImageProcessingTester(ImageProcessingTester):
    """The processor's settings for the suites: the original's normalisation, and a fixed size unless given."""

    def __init__(self, parent, size=None, num_labels=4):
        super().__init__(
            parent,
            do_resize=True,
            size=size or {"height": 30, "width": 30},
            do_normalize=True,
            image_mean=list(ORIGINAL_IMAGE_MEAN),
            image_std=list(ORIGINAL_IMAGE_STD),
            do_reduce_labels=False,
            num_labels=num_labels,
        )

    def _get_image_processing_classes(self):
        # The suite looks a model's processors up in transformers' static mapping by the name of the test's folder;
        # Cascade-CLIP's are registered when the package is imported, under its configuration.
        return dict(IMAGE_PROCESSOR_MAPPING[CascadeClipConfig])


@require_torch
@require_vision
class CascadeClipImageProcessingTest(
    PostProcessSemanticSegmentationTestMixin, ImageProcessingTestMixin, unittest.TestCase
):
    image_processor_tester_class = CascadeClipImageProcessingTester

    @unittest.skip(reason=NO_TORCHVISION)
    def test_new_models_require_torchvision_backend(self):
        pass


class CascadeClipKeepRatioImageProcessingTester(CascadeClipImageProcessingTester):
    """The processor's default kind of size: short side to `shortest_edge`, long side at most `longest_edge`."""

    def __init__(self, parent):
        super().__init__(parent, size={"shortest_edge": 32, "longest_edge": 128})

    def prepare_post_process_semantic_segmentation_inputs(self):
        # The suite's logits take their size from size["height"] and size["width"]; a keep-ratio size has neither.
        height, width = 8, 12
        logits = torch.randn(self.batch_size, self.num_labels, height, width)
        expected = {"num_labels": self.num_labels, "height": height, "width": width}
        return {"outputs": SemanticSegmenterOutput(logits=logits)}, expected


@require_torch
@require_vision
class CascadeClipKeepRatioImageProcessingTest(CascadeClipImageProcessingTest):
    image_processor_tester_class = CascadeClipKeepRatioImageProcessingTester

    @unittest.skip(reason=LISTS_FOR_MIXED_SIZES)
    def test_call_pil(self):
        pass

    @unittest.skip(reason=LISTS_FOR_MIXED_SIZES)
    def test_call_numpy(self):
        pass

    @unittest.skip(reason=LISTS_FOR_MIXED_SIZES)
    def test_call_pytorch(self):
        pass

    @unittest.skip(reason=LISTS_FOR_MIXED_SIZES)
    def test_call_numpy_4_channels(self):
        pass
