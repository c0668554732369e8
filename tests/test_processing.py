"""Image processor and processor: odd images, bad images, label maps, class names and round trips."""

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoImageProcessor, AutoProcessor
from transformers.image_utils import PILImageResampling
from transformers.modeling_outputs import SemanticSegmenterOutput

from cascade_clip_hf import CascadeClipImageProcessor, CascadeClipProcessor
from cascade_clip_hf.image_processing_cascade_clip import ImageInputError, keep_ratio_size
from cascade_clip_hf.segmenter import DEMO_MODEL

from .helpers import EXAMPLES, load_script


SMALL = {"shortest_edge": 32, "longest_edge": 128}


def unnormalize(pixel_values: torch.Tensor, processor: CascadeClipImageProcessor) -> torch.Tensor:
    mean = torch.tensor(processor.image_mean)[:, None, None]
    std = torch.tensor(processor.image_std)[:, None, None]
    return pixel_values * std + mean


@pytest.fixture
def image_processor():
    return CascadeClipImageProcessor(size=SMALL)


def test_keep_ratio_size_matches_the_original_rule():
    assert keep_ratio_size(480, 640, 512, 2048) == (512, 683)
    assert keep_ratio_size(1000, 500, 512, 2048) == (1024, 512)
    assert keep_ratio_size(100, 1000, 512, 2048) == (205, 2048)  # long side caps the scale
    assert keep_ratio_size(512, 512, 512, 2048) == (512, 512)


def test_default_normalisation_is_the_original(image_processor):
    image = np.full((32, 32, 3), (123, 116, 104), dtype=np.uint8)
    pixel_values = image_processor(image)["pixel_values"]
    expected = (torch.tensor([123.0, 116.0, 104.0]) - torch.tensor([123.675, 116.28, 103.53])) / torch.tensor(
        [58.395, 57.12, 57.375]
    )
    torch.testing.assert_close(pixel_values[0, :, 0, 0], expected)


def test_resize_is_bilinear_on_eight_bit_pixels(image_processor):
    image = np.zeros((16, 24, 3), dtype=np.uint8)
    image[:, 12:] = 200
    pixel_values = unnormalize(image_processor(image)["pixel_values"][0], image_processor)
    assert pixel_values.shape == (3, 32, 48)
    torch.testing.assert_close(pixel_values, pixel_values.round(), atol=1e-3, rtol=0)
    assert pixel_values[0, 0, 0] == 0 and pixel_values[0, 0, -1] == 200
    assert 0 < pixel_values[0, 0, 23] < 200  # interpolated across the edge


def test_resize_is_within_one_gray_level_of_opencv_the_original_resizer():
    comparison = load_script(EXAMPLES / "compare_resize_with_opencv.py")
    results = comparison.compare_with_opencv([(48, 64), (300, 200), (1200, 1600)])
    assert [result["resized"] for result in results] == [(512, 683), (768, 512), (512, 683)]
    assert all(result["max_difference"] <= 1 for result in results)
    # Not identical: OpenCV's fixed-point weights round some values the other way.
    assert all(0 < result["differing_share"] < 0.2 for result in results)


def image_variants():
    rgb = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    gray = rgb[..., 0]
    palette = PIL.Image.fromarray(rgb).convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=16)
    return {
        "pil_rgb": (PIL.Image.fromarray(rgb), rgb),
        "pil_gray": (PIL.Image.fromarray(gray), np.repeat(gray[..., None], 3, -1)),
        "pil_rgba": (PIL.Image.fromarray(np.dstack([rgb, np.zeros_like(gray)])), rgb),
        "pil_palette": (palette, np.array(palette.convert("RGB"))),
        "pil_16bit": (PIL.Image.fromarray(gray.astype(np.uint16) * 257), np.repeat(gray[..., None], 3, -1)),
        "pil_bilevel": (
            PIL.Image.fromarray(gray > 127),
            np.repeat(((gray > 127) * 255).astype(np.uint8)[..., None], 3, -1),
        ),
        "numpy_hwc": (rgb, rgb),
        "numpy_chw": (rgb.transpose(2, 0, 1), rgb),
        "numpy_gray": (gray, np.repeat(gray[..., None], 3, -1)),
        "numpy_gray_alpha": (np.dstack([gray, gray]), np.repeat(gray[..., None], 3, -1)),
        "numpy_uint16": (rgb.astype(np.uint16) * 257, rgb),
        "numpy_float01": (rgb / 255.0, rgb),
        "numpy_float255": (rgb.astype(np.float32), rgb),
        "torch_chw": (torch.from_numpy(rgb).permute(2, 0, 1), rgb),
        "torch_float01": (torch.from_numpy(rgb).permute(2, 0, 1) / 255.0, rgb),
    }


@pytest.mark.parametrize("name", list(image_variants()))
def test_odd_images_become_rgb(name):
    image, expected_rgb = image_variants()[name]
    processor = CascadeClipImageProcessor(do_resize=False)
    pixel_values = unnormalize(processor(image)["pixel_values"][0], processor)
    torch.testing.assert_close(
        pixel_values, torch.from_numpy(expected_rgb).permute(2, 0, 1).float(), atol=1e-3, rtol=0
    )


def test_images_of_different_sizes_come_back_as_a_list(image_processor):
    batch = image_processor([np.zeros((32, 32, 3), np.uint8), np.zeros((32, 64, 3), np.uint8)])
    assert isinstance(batch["pixel_values"], list)
    assert [tuple(p.shape) for p in batch["pixel_values"]] == [(3, 32, 32), (3, 32, 64)]
    same = image_processor([np.zeros((16, 16, 3), np.uint8)] * 3)
    assert same["pixel_values"].shape == (3, 3, 32, 32)


def test_fixed_size_resize():
    processor = CascadeClipImageProcessor(size={"height": 40, "width": 24})
    assert processor(np.zeros((10, 90, 3), np.uint8))["pixel_values"].shape == (1, 3, 40, 24)


def test_corrupt_file_names_the_path(tmp_path, image_processor):
    path = tmp_path / "broken.jpg"
    buffer = tmp_path / "whole.jpg"
    PIL.Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buffer)
    path.write_bytes(buffer.read_bytes()[:200])
    with pytest.raises(ImageInputError, match="broken.jpg"):
        image_processor(str(path))
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("hello")
    with pytest.raises(ImageInputError, match="notes.txt: not a readable image"):
        image_processor(not_an_image)
    with pytest.raises(ImageInputError, match="no such file"):
        image_processor(tmp_path / "missing.png")


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 10, 3), np.uint8), "empty"),
        (np.zeros((10, 10, 5), np.uint8), "1 to 4 channels"),
        (np.zeros((2, 10, 10, 3, 1), np.uint8), "expected an image"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
        (np.full((8, 8, 3), -1.0, np.float32), r"\[0, 1\] or \[0, 255\]"),
        (np.full((8, 8, 3), 300.0, np.float32), r"\[0, 1\] or \[0, 255\]"),
        (np.full((8, 8, 3), 70000, np.int32), "0..65535"),
        (np.zeros((8, 8, 3), np.complex64), "unsupported pixel type"),
    ],
)
def test_bad_images_get_clear_errors(image_processor, image, message):
    with pytest.raises(ImageInputError, match=message):
        image_processor([np.zeros((8, 8, 3), np.uint8), image])


def test_error_names_the_position_in_the_batch(image_processor):
    with pytest.raises(ImageInputError, match="Image 1 of 2"):
        image_processor([np.zeros((8, 8, 3), np.uint8), np.zeros((0, 8, 3), np.uint8)])


def test_label_maps_follow_the_image_and_reduce(image_processor):
    labels = np.zeros((16, 16), np.uint8)
    labels[:, 8:] = 3
    labels[0, 0] = 255
    image = np.zeros((16, 16, 3), np.uint8)
    batch = image_processor(image, segmentation_maps=PIL.Image.fromarray(labels), do_reduce_labels=True)
    assert batch["labels"].shape == (1, 32, 32)
    assert batch["labels"].dtype == torch.int64
    assert set(batch["labels"].unique().tolist()) == {2, 255}
    assert batch["labels"][0, 0, 0] == 255 and batch["labels"][0, 5, 30] == 2
    kept = image_processor(image, segmentation_maps=labels)["labels"]
    assert set(kept.unique().tolist()) == {0, 3, 255}


def test_bad_label_maps_get_clear_errors(image_processor):
    image = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ImageInputError, match="single-channel"):
        image_processor(image, segmentation_maps=PIL.Image.fromarray(image))
    with pytest.raises(ImageInputError, match="has size"):
        image_processor(image, segmentation_maps=np.zeros((8, 16), np.uint8))
    with pytest.raises(ImageInputError, match="fractional"):
        image_processor(image, segmentation_maps=np.full((16, 16), 0.5))
    with pytest.raises(ValueError, match=r"segmentation maps \(1\) is not that of images \(2\)"):
        image_processor([image, image], segmentation_maps=[np.zeros((16, 16), np.uint8)])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="size must be"):
        CascadeClipImageProcessor(size={"shortest_edge": 512})
    with pytest.raises(ValueError, match="return_tensors"):
        CascadeClipImageProcessor()(np.zeros((8, 8, 3), np.uint8), return_tensors="tf")


def test_post_process_takes_logits_or_scores():
    processor = CascadeClipImageProcessor()

    class Outputs:
        logits = torch.tensor([[[[0.0, 3.0]], [[0.1, 2.0]]]])  # (1, 2, 1, 2)
        score_shift = torch.tensor([[0.0, 0.1]])

    # class 1 wins on raw logits in the first pixel, loses once its seen-class shift is applied
    assert Outputs.logits[0].argmax(0).tolist() == [[1, 0]]
    assert processor.post_process_semantic_segmentation(Outputs)[0].tolist() == [[0, 0]]
    calibrated = processor.post_process_semantic_segmentation(Outputs, return_segmentation_scores=True)[0]
    torch.testing.assert_close(
        calibrated.segmentation_scores, Outputs.logits[0].sigmoid() - torch.tensor([0.0, 0.1])[:, None, None]
    )
    scores = torch.rand(2, 3, 10, 12)
    maps = processor.post_process_semantic_segmentation(scores, target_sizes=[(10, 12), (20, 24)])
    assert torch.equal(maps[0], scores[0].argmax(0))
    assert maps[1].shape == (20, 24)
    with pytest.raises(ValueError, match="target sizes"):
        processor.post_process_semantic_segmentation(scores, target_sizes=[(10, 12)])


def test_images_keep_their_channels_without_rgb_conversion():
    processor = CascadeClipImageProcessor(do_resize=False, do_normalize=False)
    rgba = np.random.default_rng(2).integers(0, 256, (6, 9, 4), dtype=np.uint8)
    kept = processor(rgba, do_convert_rgb=False)["pixel_values"]
    assert torch.equal(kept[0], torch.from_numpy(rgba).permute(2, 0, 1).float())
    assert processor(rgba)["pixel_values"].shape == (1, 3, 6, 9)
    gray16 = PIL.Image.fromarray(rgba[..., 0].astype(np.uint16) * 257)
    assert torch.equal(
        processor(gray16, do_convert_rgb=False)["pixel_values"][0, 0], torch.from_numpy(rgba[..., 0]).float()
    )
    # (3, 10, 3) reads as 3x10 pixels of 3 channels unless told it is channels-first
    ambiguous = np.random.default_rng(3).integers(0, 256, (3, 10, 3), dtype=np.uint8)
    assert processor(ambiguous)["pixel_values"].shape == (1, 3, 3, 10)
    first = processor(ambiguous, input_data_format="channels_first")["pixel_values"]
    assert torch.equal(first[0], torch.from_numpy(ambiguous).float())


def test_return_tensors_none_gives_lists_of_numpy_arrays(image_processor):
    images = [np.zeros((16, 16, 3), np.uint8), np.zeros((16, 32, 3), np.uint8)]
    batch = image_processor(images, segmentation_maps=[np.zeros((16, 16)), np.zeros((16, 32))], return_tensors=None)
    assert [type(value) for value in batch["pixel_values"]] == [np.ndarray, np.ndarray]
    assert [value.shape for value in batch["labels"]] == [(32, 32), (32, 64)]
    same = image_processor(images[:1] * 2, return_tensors="np")["pixel_values"]
    assert isinstance(same, np.ndarray) and same.shape == (2, 3, 32, 32)


def test_padding_gives_one_tensor_with_a_pixel_mask(image_processor):
    images = [np.full((16, 16, 3), 200, np.uint8), np.full((16, 32, 3), 100, np.uint8)]
    labels = [np.full((16, 16), 1), np.full((16, 32), 2)]
    unpadded = image_processor(images, segmentation_maps=labels)
    batch = image_processor(images, segmentation_maps=labels, do_pad=True)
    assert batch["pixel_values"].shape == (2, 3, 32, 64) and batch["pixel_mask"].shape == (2, 32, 64)
    assert torch.equal(batch["pixel_values"][0, :, :, :32], unpadded["pixel_values"][0])
    assert torch.equal(batch["pixel_values"][1], unpadded["pixel_values"][1])
    assert batch["pixel_values"][0, :, :, 32:].abs().sum() == 0
    assert batch["pixel_mask"][0].sum() == 32 * 32 and batch["pixel_mask"][1].all()
    assert set(batch["labels"][0, :, 32:].unique().tolist()) == {255}
    assert torch.equal(batch["labels"][0, :, :32], unpadded["labels"][0])
    to_size = image_processor(images[0], do_pad=True, pad_size={"height": 40, "width": 48})
    assert to_size["pixel_values"].shape == (1, 3, 40, 48)


def test_standard_options_follow_transformers(image_processor):
    image = np.random.default_rng(4).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    rescaled = image_processor(
        image, do_resize=False, do_rescale=True, rescale_factor=1 / 255, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )["pixel_values"][0]
    expected = (torch.from_numpy(image).permute(2, 0, 1).double() / 255 - 0.5) / 0.5
    torch.testing.assert_close(rescaled.double(), expected, atol=1e-6, rtol=0)
    nearest = image_processor(image, size={"height": 16, "width": 16}, resample=PILImageResampling.NEAREST)
    doubled = torch.from_numpy(image).permute(2, 0, 1).float().repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.equal(unnormalize(nearest["pixel_values"][0], image_processor).round(), doubled)
    with pytest.raises(ValueError, match="resample"):
        image_processor(image, resample=PILImageResampling.LANCZOS)
    with pytest.raises(ValueError, match="does not crop"):
        image_processor(image, do_center_crop=True, crop_size={"height": 4, "width": 4})
    with pytest.raises(TypeError, match="unexpected keyword argument 'shortest_edge'"):
        image_processor(image, shortest_edge=64)


def test_settings_survive_saving(tmp_path):
    processor = CascadeClipImageProcessor(size={"height": 40, "width": 24}, do_reduce_labels=True, do_pad=True)
    processor.save_pretrained(tmp_path)
    reloaded = CascadeClipImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == processor.to_dict()
    assert reloaded.size == {"height": 40, "width": 24} and reloaded.do_reduce_labels and reloaded.do_pad


def test_post_process_reads_any_segmentation_output():
    logits = torch.randn(2, 3, 5, 6)
    processor = CascadeClipImageProcessor()
    maps = processor.post_process_semantic_segmentation(SemanticSegmenterOutput(logits=logits))
    assert torch.equal(maps[1], logits[1].argmax(0))
    results = processor.post_process_semantic_segmentation(
        SemanticSegmenterOutput(logits=logits),
        target_sizes=torch.tensor([[5, 6], [10, 12]]),
        return_segmentation_scores=True,
    )
    assert torch.equal(results[0].segmentation, maps[0]) and torch.equal(results[0].segmentation_scores, logits[0])
    assert results[1].segmentation_scores.shape == (3, 10, 12)
    assert torch.equal(results[1].segmentation, results[1].segmentation_scores.argmax(0))


@pytest.fixture
def processor(clip_tokenizer):
    return CascadeClipProcessor(
        CascadeClipImageProcessor(size=SMALL),
        clip_tokenizer,
        templates=["a photo of a {}.", "a {} in the scene."],
        seen_classes=["cat", "sky"],
    )


def test_processor_expands_templates(processor, clip_tokenizer):
    inputs = processor(text=["cat", "traffic light", "dog"])
    assert inputs["input_ids"].shape[:2] == (3, 2)
    expected_ids = clip_tokenizer("a traffic light in the scene.")["input_ids"]
    length = len(expected_ids)
    assert inputs["input_ids"][1, 1, :length].tolist() == expected_ids
    assert inputs["attention_mask"][1, 1].sum() == length
    assert inputs["seen_class_mask"].tolist() == [True, False, False]


def test_templates_per_call_are_deprecated(processor):
    with pytest.warns(FutureWarning, match="set `processor.templates`"):
        one_template = processor(text="cat", templates=["{}"])
    assert one_template["input_ids"].shape[:2] == (1, 1)
    assert processor.templates == ["a photo of a {}.", "a {} in the scene."]
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="exactly one"):
        processor(text=["cat"], templates=["a photo"])


def test_processor_routes_keyword_arguments(processor, clip_tokenizer):
    image = np.zeros((16, 16, 3), np.uint8)
    labels = np.zeros((16, 16), np.uint8)
    flat = processor(
        images=image,
        text=["cat", "dog"],
        max_length=20,
        padding="max_length",
        do_reduce_labels=True,
        segmentation_maps=labels,
    )
    assert flat["input_ids"].shape == (2, 2, 20)
    assert set(flat["labels"].unique().tolist()) == {255}
    nested = processor(
        images=image,
        text=["cat", "dog"],
        segmentation_maps=labels,
        text_kwargs={"max_length": 20, "padding": "max_length"},
        images_kwargs={"do_reduce_labels": True},
    )
    for key, value in flat.items():
        assert torch.equal(value, nested[key])
    with pytest.raises(ValueError, match="passed two times"):
        processor(text=["cat"], max_length=20, text_kwargs={"max_length": 30})
    as_numpy = processor(images=image, text=["cat", "dog"], return_tensors="np")
    assert {type(value) for value in as_numpy.values()} == {np.ndarray}
    assert as_numpy["seen_class_mask"].tolist() == [True, False]
    as_lists = processor(images=image, text=["cat", "dog"], return_tensors=None)
    assert isinstance(as_lists["pixel_values"][0], np.ndarray) and as_lists["seen_class_mask"] == [True, False]
    assert as_lists["input_ids"][1][1] == processor(text=["cat", "dog"])["input_ids"][1, 1].tolist()
    padded = processor(images=[image, np.zeros((16, 32, 3), np.uint8)], do_pad=True)
    assert padded["pixel_values"].shape == (2, 3, 32, 64) and padded["pixel_mask"].shape == (2, 32, 64)


def test_prompts_stop_at_clips_77_positions_with_a_saved_tokenizer():
    """The shipped tokenizer was saved with `max_length: null`, which transformers gives priority over the
    processor's default: the prompts must still be cut at the text tower's 77 positions."""
    processor = CascadeClipProcessor.from_pretrained(DEMO_MODEL)
    assert processor.tokenizer.init_kwargs["max_length"] is None
    assert processor(text=["sand " * 100, "soil"])["input_ids"].shape == (2, 3, 77)


@pytest.mark.parametrize(
    "text, message",
    [
        ([], "No class names"),
        (["cat", "  "], "empty"),
        (["cat", "Cat "], "Duplicate class names"),
        (["cat", 3], "must be strings"),
    ],
)
def test_processor_refuses_bad_class_names(processor, text, message):
    with pytest.raises(ValueError, match=message):
        processor(text=text)


def test_processor_refuses_bad_templates(processor, clip_tokenizer):
    with pytest.raises(ValueError, match=r"Template '\{\} and \{\}' in templates needs exactly one"):
        CascadeClipProcessor(CascadeClipImageProcessor(), clip_tokenizer, templates=["{} and {}"])
    with pytest.raises(ValueError, match="Pass images, text"):
        processor()


def test_processor_seen_classes_are_a_list_of_names(clip_tokenizer):
    with pytest.raises(ValueError, match="seen_classes must be a list of strings"):
        CascadeClipProcessor(CascadeClipImageProcessor(), clip_tokenizer, seen_classes=5)
    one_class = CascadeClipProcessor(CascadeClipImageProcessor(), clip_tokenizer, seen_classes="cat")
    assert one_class.seen_classes == ["cat"]  # not ["c", "a", "t"]


def test_processor_round_trip(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded, CascadeClipProcessor)
    assert reloaded.templates == processor.templates
    assert reloaded.seen_classes == processor.seen_classes
    assert reloaded.image_processor.size == SMALL
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), CascadeClipImageProcessor)
    image = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    for key, value in processor(images=image, text=["cat", "dog"]).items():
        assert torch.equal(value, reloaded(images=image, text=["cat", "dog"])[key])


def test_post_processing_upsamples_through_the_models_mask_size_like_the_model():
    """Logits become scores by one rule everywhere: up to the model's image_size, calibrate, resize to the target."""

    class Outputs:
        logits = 20 * torch.randn(1, 3, 4, 6)
        score_shift = torch.tensor([[0.1, 0.0, 0.1]])

    upsampled = torch.nn.functional.interpolate(Outputs.logits, size=(64, 64), mode="bilinear")
    expected = torch.nn.functional.interpolate(
        upsampled.sigmoid() - Outputs.score_shift[0, :, None, None], size=(50, 70), mode="bilinear"
    )[0]
    processor = CascadeClipImageProcessor(mask_size=64)
    result = processor.post_process_semantic_segmentation(Outputs, [(50, 70)], return_segmentation_scores=True)[0]
    torch.testing.assert_close(result.segmentation_scores, expected, rtol=0, atol=1e-6)
    assert torch.equal(result.segmentation, expected.argmax(dim=0))
    straight = CascadeClipImageProcessor().post_process_semantic_segmentation(
        Outputs, [(50, 70)], return_segmentation_scores=True
    )[0]
    assert (straight.segmentation_scores - expected).abs().max() > 1e-3


def test_sixteen_bit_images_read_alike_in_either_byte_order():
    values = np.random.RandomState(0).randint(0, 65536, (6, 7)).astype(np.uint16)
    little = PIL.Image.fromarray(values, mode="I;16")
    big = PIL.Image.frombytes("I;16B", (7, 6), values.astype(">u2").tobytes())
    processor = CascadeClipImageProcessor(do_resize=False)
    expected = processor(little)["pixel_values"]
    assert torch.equal(processor(big)["pixel_values"], expected)
    assert torch.equal(processor(values.astype(">u2"))["pixel_values"], expected)
    assert torch.equal(processor(torch.from_numpy(values.astype(np.int32)))["pixel_values"], expected)


def test_half_precision_tensors_and_none():
    image = torch.rand(3, 8, 9)
    processor = CascadeClipImageProcessor(do_resize=False)
    expected = processor(image)["pixel_values"]
    assert processor(image.to(torch.bfloat16))["pixel_values"].shape == expected.shape
    with pytest.raises(ValueError, match="None instead of an image"):
        processor(None)
