"""transformers' common model suites on `CascadeClipForZeroShotSegmentation`: `ModelTesterMixin`, `ConfigTester` and
`PipelineTesterMixin`, from the installed transformers' source distribution (see tests/transformers_suites.py).

The tester follows transformers' composite image-text models (CLIP, CLIPSeg): a text tester and a vision tester on
tiny towers. The text tower's batch is the vocabulary (one prompt per class), the vision tower's the images.
"""

import unittest

import torch
from transformers.testing_utils import require_torch, torch_device
from transformers_tests.test_configuration_common import ConfigTester
from transformers_tests.test_modeling_common import (
    ModelTesterMixin,
    floats_tensor,
    ids_tensor,
    random_attention_mask,
)
from transformers_tests.test_pipeline_mixin import PipelineTesterMixin

from cascade_clip_hf import CascadeClipConfig, CascadeClipForZeroShotSegmentation
from cascade_clip_hf.labels import IGNORE_INDEX

from .helpers import TINY_CASCADE_KWARGS, TINY_TEXT_CONFIG, TINY_VISION_CONFIG


class CascadeClipTextTester:
    """Class prompts, `(num_classes, sequence_length)` token ids, for the tiny CLIP text tower of helpers.py."""

    def __init__(self, num_classes=3, seq_length=7, vocab_size=99):
        # 3 classes against 2 images: a mix-up of the class and image axes changes shapes and fails loudly.
        self.num_classes = num_classes
        self.seq_length = seq_length
        self.vocab_size = vocab_size

    def get_config(self) -> dict:
        # A vocabulary of 99 tokens instead of CLIP's 49408 keeps the suites fast; bos/eos ids inside it, and eos 2
        # pools at the highest token id as CLIP's original checkpoints do.
        return {**TINY_TEXT_CONFIG, "vocab_size": self.vocab_size, "bos_token_id": 0, "eos_token_id": 2}

    def prepare_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids = ids_tensor([self.num_classes, self.seq_length], self.vocab_size)
        # Every prompt keeps at least two tokens and its mask is a prefix of ones, as a tokenizer's padding makes it.
        lengths = random_attention_mask([self.num_classes, self.seq_length]).sum(dim=-1).clamp(min=2)
        attention_mask = (torch.arange(self.seq_length, device=torch_device)[None] < lengths[:, None]).long()
        return input_ids, attention_mask


class CascadeClipVisionTester:
    """Images for the tiny CLIP vision tower of helpers.py, two layers deep (the suites allow no more than two)."""

    def __init__(self, batch_size=2, num_hidden_layers=2):
        self.batch_size = batch_size
        self.num_hidden_layers = num_hidden_layers
        self.image_size = TINY_VISION_CONFIG["image_size"]
        self.patch_size = TINY_VISION_CONFIG["patch_size"]
        self.num_channels = 3

    def get_config(self) -> dict:
        return {**TINY_VISION_CONFIG, "num_hidden_layers": self.num_hidden_layers}

    def prepare_inputs(self) -> torch.Tensor:
        return floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])


class CascadeClipModelTester:
    def __init__(self, parent, cascade_stages=((0,),), class_names=("cat", "dog", "sky")):
        self.parent = parent
        self.text_tester = CascadeClipTextTester()
        self.vision_tester = CascadeClipVisionTester()
        # Layer 0 tapped as one stage, the last layer decoded on its own: two decoders.
        self.cascade_stages = [list(stage) for stage in cascade_stages]
        self.class_names = list(class_names)
        self.is_training = True
        # What ModelTesterMixin reads: the vision tower's sizes (hidden states and attentions are the vision
        # tower's) and the number of images.
        vision_config = self.vision_tester.get_config()
        self.batch_size = self.vision_tester.batch_size
        self.num_hidden_layers = vision_config["num_hidden_layers"]
        self.hidden_size = vision_config["hidden_size"]
        self.num_attention_heads = vision_config["num_attention_heads"]
        self.image_size = self.vision_tester.image_size
        self.patch_size = self.vision_tester.patch_size
        self.num_channels = self.vision_tester.num_channels
        # Every layer is prompted: its tokens are the CLS token, the prompt tokens and the patches.
        num_patches = (self.image_size // self.patch_size) ** 2
        self.seq_length = 1 + TINY_CASCADE_KWARGS["num_prompt_tokens"] + num_patches

    def get_config(self) -> CascadeClipConfig:
        return CascadeClipConfig(
            vision_config=self.vision_tester.get_config(),
            text_config=self.text_tester.get_config(),
            num_prompt_layers=self.num_hidden_layers,
            cascade_stages=self.cascade_stages,
            decoder_num_layers=2,
            id2label=dict(enumerate(self.class_names)),
            seen_class_ids=[0, 1],
            slide_crop_size=self.image_size,
            slide_stride=self.image_size // 2,
            **TINY_CASCADE_KWARGS,
        )

    def prepare_config_and_inputs(self):
        input_ids, attention_mask = self.text_tester.prepare_inputs()
        return self.get_config(), self.vision_tester.prepare_inputs(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values, input_ids, attention_mask = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values, "input_ids": input_ids, "attention_mask": attention_mask}

    def labels(self, pixel_values: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Per-pixel labels over every class, with some ignored pixels; the same for the same shapes."""
        batch_size, _, height, width = pixel_values.shape
        labels = torch.arange(height * width, device=torch_device).view(height, width) // 5 % num_classes
        labels[: height // 4] = IGNORE_INDEX
        return labels.expand(batch_size, -1, -1).clone()

    def create_and_check_model(self, config, pixel_values, input_ids, attention_mask):
        model = CascadeClipForZeroShotSegmentation(config).to(torch_device).eval()
        grid = self.image_size // self.patch_size
        num_classes = input_ids.shape[0]
        with torch.no_grad():
            named = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
            default = model(pixel_values=pixel_values)
        self.parent.assertEqual(named.logits.shape, (self.batch_size, num_classes, grid, grid))
        self.parent.assertEqual(
            named.decoder_logits.shape, (self.batch_size, len(self.cascade_stages) + 1, num_classes, grid, grid)
        )
        self.parent.assertEqual(named.class_embeds.shape, (self.batch_size, num_classes, config.projection_dim))
        self.parent.assertEqual(default.logits.shape, (self.batch_size, len(self.class_names), grid, grid))


@require_torch
class CascadeClipModelTest(ModelTesterMixin, PipelineTesterMixin, unittest.TestCase):
    all_model_classes = (CascadeClipForZeroShotSegmentation,)
    # The model runs in transformers' image-segmentation pipeline (and in its own zero-shot one, which transformers'
    # suites do not know). The mixin runs a task's tests on the Hub's tiny checkpoint of the architecture; there is
    # none for a model outside transformers, so the mixin skips them itself.
    pipeline_model_mapping = {"image-segmentation": CascadeClipForZeroShotSegmentation}
    # A CLIP vision tower and a CLIP text tower, each with its own sub-configuration, as CLIPModel.
    _is_composite = True
    # test_can_init_all_missing_weights runs for models whose configuration file names a copyright year from 2023
    # on; configuration_cascade_clip.py names none, which the suite reads as the oldest models.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = CascadeClipModelTester(self)
        self.config_tester = ConfigTester(
            self,
            config_class=CascadeClipConfig,
            has_text_modality=False,
            common_properties=["projection_dim", "num_prompt_tokens", "cascade_stages"],
        )

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # The suite adds labels only to the classes of transformers' own task mappings.
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            num_classes = (
                len(inputs_dict["input_ids"]) if "input_ids" in inputs_dict else len(self.model_tester.class_names)
            )
            inputs_dict["labels"] = self.model_tester.labels(inputs_dict["pixel_values"], num_classes)
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())
