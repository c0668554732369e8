"""Configuration: presets of the six paper settings, validation, serialisation, attention implementations."""

import pytest
import torch

from cascade_clip_hf import CascadeClipConfig, CascadeClipForZeroShotSegmentation
from cascade_clip_hf.presets import BENCHMARKS, benchmark_facts, load_benchmarks


@pytest.mark.parametrize("benchmark", BENCHMARKS)
@pytest.mark.parametrize("setting", ["inductive", "transductive"])
def test_presets_follow_the_original_release(benchmark, setting):
    facts = load_benchmarks()[benchmark]
    config = CascadeClipConfig.from_preset(benchmark, setting)
    assert config.class_names == facts["class_names"]
    assert config.seen_class_ids == facts[setting]["seen_class_ids"]
    unseen = sorted(set(range(config.num_labels)) - set(config.seen_class_ids))
    assert unseen == facts[setting]["unseen_class_ids"]
    assert config.num_prompt_tokens == facts[setting]["num_prompt_tokens"]
    assert config.extract_layers == facts[setting]["extract_layers"]
    assert config.cascade_stages == [[5, 6, 7], [8, 9, 10]]
    assert config.templates == facts["templates"]
    assert config.setting == setting
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (512, 16)
    assert (config.slide_crop_size, config.slide_stride) == (512, 426)


def test_preset_sizes():
    assert CascadeClipConfig.from_preset("coco-stuff-164k").num_labels == 171
    assert CascadeClipConfig.from_preset("pascal-voc-2012").num_labels == 20
    assert CascadeClipConfig.from_preset("pascal-context-59").num_labels == 59
    with pytest.raises(ValueError, match="Unknown benchmark"):
        benchmark_facts("ade20k")
    with pytest.raises(ValueError, match="Unknown setting"):
        benchmark_facts("pascal-voc-2012", "supervised")


def test_round_trip_keeps_every_field(tmp_path):
    config = CascadeClipConfig.from_preset("pascal-context-59", "transductive", num_prompt_layers=6)
    config.save_pretrained(tmp_path)
    reloaded = CascadeClipConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    assert reloaded.id2label[58] == "wood"
    assert reloaded.label2id["wood"] == 58


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"setting": "semi"}, "setting must be one of"),
        ({"cascade_stages": [[5, 6], [6, 7]]}, "distinct layers"),
        ({"cascade_stages": [[11]]}, "always its own stage"),
        ({"cascade_stages": [[]]}, "non-empty"),
        ({"num_prompt_layers": 0}, "num_prompt_layers"),
        ({"decoder_num_attention_heads": 7}, "not a multiple"),
        ({"text_config": {"projection_dim": 256}}, "text tower projects"),
        ({"id2label": {0: "cat"}, "seen_class_ids": [0, 3]}, "not ids of id2label"),
        ({"templates": ["a photo"]}, "exactly one"),
        ({"slide_stride": 0}, "slide_stride must lie in"),
        ({"slide_stride": 600}, "leaves pixels between the windows"),
    ],
)
def test_invalid_configurations_are_refused(kwargs, message):
    with pytest.raises(Exception, match=message):
        CascadeClipConfig(**kwargs)


def test_no_default_vocabulary_unless_given():
    config = CascadeClipConfig()
    assert config.num_labels == 0 and config.id2label == {}


def test_eager_and_sdpa_attention_agree(tiny_model_dir):
    pixel_values = torch.randn(1, 3, 64, 64)
    logits = {}
    for implementation in ("eager", "sdpa"):
        model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_model_dir, attn_implementation=implementation)
        assert model.vision_encoder.clip.config._attn_implementation == implementation
        with torch.no_grad():
            logits[implementation] = model.eval()(pixel_values=pixel_values).logits
    torch.testing.assert_close(logits["eager"], logits["sdpa"], atol=1e-5, rtol=1e-5)
