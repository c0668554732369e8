"""The sliding window apart from the model: window plans, float32 sums, and class maps made a few classes at a time
that equal, bit for bit, the argmax over every class's scores resized at once."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cascade_clip_hf import CascadeClipForZeroShotSegmentation, CascadeClipProcessor
from cascade_clip_hf import sliding_window as sliding_window_module
from cascade_clip_hf.calibration import calibrated_scores
from cascade_clip_hf.image_processing_cascade_clip import CascadeClipImageProcessor
from cascade_clip_hf.pipeline_cascade_clip import CascadeClipZeroShotSegmentationPipeline
from cascade_clip_hf.sliding_window import (
    class_chunk_size,
    plan_windows,
    segment_in_class_chunks,
    segment_scores,
    sliding_window_scores,
    window_batches,
)

from .helpers import random_image


PROCESSED_SIZE = (37, 53)
# Upsampling, downsampling, odd, wide, tall, the processed size itself, and both sides of the size (height + width
# of 128) below which torch's CPU kernel resizes classes together.
OUTPUT_SIZES = [(300, 401), (20, 17), (101, 99), (31, 700), (700, 29), PROCESSED_SIZE, (64, 64), (64, 65)]


def full_resolution_class_map(scores: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """What the code before chunking computed: every class resized at once, then the argmax and its scores."""
    resized = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    segmentation = resized.argmax(dim=0)
    return segmentation, resized.gather(0, segmentation[None])[0]


def assert_same_class_map(class_map, scores: torch.Tensor, size: tuple[int, int]) -> None:
    segmentation, winning_scores = full_resolution_class_map(scores, size)
    assert class_map.segmentation.dtype == torch.long and class_map.segmentation.shape == size
    assert torch.equal(class_map.segmentation, segmentation)
    assert torch.equal(class_map.scores, winning_scores)


@pytest.mark.parametrize("size", OUTPUT_SIZES)
@pytest.mark.parametrize("classes_per_chunk", [1, 2, 4, 6, 100])
@pytest.mark.parametrize("num_threads", [1, 2])
def test_class_map_equals_the_full_resolution_argmax(size, classes_per_chunk, num_threads):
    scores = torch.randn(7, *PROCESSED_SIZE, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        class_map = segment_scores(scores, size, chunk_elements=classes_per_chunk * size[0] * size[1])
    finally:
        torch.set_num_threads(threads)
    assert class_map.class_scores is None
    assert_same_class_map(class_map, scores, size)


def test_three_classes_and_small_outputs_are_never_split():
    # torch's CPU kernel rounds these differently when classes are resized apart (see class_chunk_size).
    assert class_chunk_size(3, (300, 400), chunk_elements=1) == 3
    assert class_chunk_size(100, (64, 64), chunk_elements=1) == 100
    assert class_chunk_size(100, (64, 65), chunk_elements=1) == 1
    assert class_chunk_size(7, (100, 100), chunk_elements=4 * 100 * 100) == 2
    assert class_chunk_size(171, (3000, 4000)) == 5
    assert class_chunk_size(171, (400, 400)) == 171


def test_ties_go_to_the_first_class_and_nan_wins_as_in_argmax():
    generator = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 3, (9, *PROCESSED_SIZE), generator=generator).float()
    scores[4, :5] = float("nan")
    scores[7, 3:9] = float("nan")
    for size in [PROCESSED_SIZE, (90, 120)]:
        for classes_per_chunk in [1, 2, 5]:
            class_map = segment_scores(scores, size, chunk_elements=classes_per_chunk * size[0] * size[1])
            segmentation, winning_scores = full_resolution_class_map(scores, size)
            assert torch.equal(class_map.segmentation, segmentation)
            torch.testing.assert_close(class_map.scores, winning_scores, rtol=0, atol=0, equal_nan=True)
    assert (full_resolution_class_map(scores, PROCESSED_SIZE)[0][:5] == 4).any()


def test_every_class_score_is_kept_only_when_asked():
    scores = torch.randn(5, *PROCESSED_SIZE, generator=torch.Generator().manual_seed(2))
    size = (120, 90)
    resized = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
    for chunk_elements in [size[0] * size[1], 10**9]:
        class_map = segment_scores(scores, size, chunk_elements=chunk_elements, keep_class_scores=True)
        assert torch.equal(class_map.class_scores, resized)
        assert_same_class_map(class_map, scores, size)


def test_no_classes_is_refused():
    with pytest.raises(ValueError, match="no classes"):
        segment_in_class_chunks(0, (10, 10), lambda classes: torch.zeros(0, 10, 10))


def test_windows_of_one_size_are_batched_together():
    windows = plan_windows([(80, 100), (40, 100)], crop_size=64, stride=48)
    assert [(w.height, w.width) for w in windows] == [(40, 64)] * 2 + [(64, 64)] * 4
    assert [(w.image_index, w.top, w.left) for w in windows[2:]] == [(0, 0, 0), (0, 0, 36), (0, 16, 0), (0, 16, 36)]
    batches = window_batches(windows, window_batch_size=3)
    assert [len(batch) for batch in batches] == [2, 1, 3]
    assert all(len({(w.height, w.width) for w in batch}) == 1 for batch in batches)
    with pytest.raises(ValueError, match="window_batch_size"):
        window_batches(windows, window_batch_size=0)


def test_bfloat16_window_logits_are_summed_in_float32():
    images = [torch.zeros(3, 64, 100), torch.zeros(3, 50, 64)]
    generator = torch.Generator().manual_seed(3)

    def window_logits(crops):
        return torch.randn(len(crops), 5, 4, 4, generator=generator).to(torch.bfloat16)

    shift = torch.tensor([0.1, 0.0, 0.1, 0.0, 0.0])
    half = sliding_window_scores(images, window_logits, shift, 64, 36, mask_size=64)
    generator.manual_seed(3)
    single = sliding_window_scores(images, lambda crops: window_logits(crops).float(), shift, 64, 36, mask_size=64)
    assert all(scores.dtype == torch.float32 for scores in half)
    for half_scores, single_scores in zip(half, single, strict=True):
        assert torch.equal(half_scores, single_scores)


def test_numpy_window_logits_work_as_tensors():
    images = [torch.zeros(3, 64, 100)]
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(4))
    shift = torch.zeros(3)
    from_numpy = sliding_window_scores(images, lambda crops: logits[: len(crops)].numpy(), shift, 64, 36)
    from_torch = sliding_window_scores(images, lambda crops: logits[: len(crops)], shift, 64, 36)
    assert torch.equal(from_numpy[0], from_torch[0])


def test_model_segmentation_output_equals_the_argmax_of_its_scores(tiny_model, monkeypatch):
    monkeypatch.setattr(sliding_window_module, "RESIZE_CHUNK_ELEMENTS", 1)
    generator = torch.Generator().manual_seed(5)
    images = [torch.randn(3, 64, 90, generator=generator), torch.randn(3, 70, 64, generator=generator)]
    sizes = [(130, 181), (40, 250)]
    scores = tiny_model.sliding_window_inference(images, output_size=sizes, crop_size=64, stride=40)
    class_maps = tiny_model.sliding_window_inference(
        images, output_size=sizes, crop_size=64, stride=40, output="segmentation"
    )
    for image_scores, class_map in zip(scores, class_maps, strict=True):
        assert torch.equal(class_map.segmentation, image_scores.argmax(dim=0))
        assert torch.equal(class_map.scores, image_scores.max(dim=0).values)
    with pytest.raises(ValueError, match="output must be"):
        tiny_model.sliding_window_inference(images, output="logits")


def test_bfloat16_model_gives_float32_scores(tiny_model_dir):
    model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    pixel_values = torch.randn(1, 3, 64, 100, generator=torch.Generator().manual_seed(6)).bfloat16()
    scores = model.sliding_window_inference(pixel_values, crop_size=64, stride=36)
    class_map = model.sliding_window_inference(pixel_values, crop_size=64, stride=36, output="segmentation")[0]
    assert scores.dtype == torch.float32 and class_map.scores.dtype == torch.float32
    assert torch.equal(class_map.segmentation, scores[0].argmax(dim=0))


def old_pipeline_segments(segmenter, image, candidate_labels):
    """The pipeline's answer as computed before chunking: every class's scores at the image's size."""
    inputs = segmenter.preprocess([image], candidate_labels=candidate_labels)
    class_embeds = None
    if "input_ids" in inputs:
        class_embeds = segmenter.model.get_class_embeddings(inputs["input_ids"], inputs["attention_mask"])
    with torch.no_grad():
        scores = segmenter.model.sliding_window_inference(
            list(inputs["pixel_values"]),
            output_size=inputs["output_sizes"],
            class_embeds=class_embeds,
            seen_class_mask=inputs.get("seen_class_mask"),
        )[0]
    segmentation = scores.argmax(dim=0)
    segments = []
    for class_index in segmentation.unique().tolist():
        region = segmentation == class_index
        segments.append(
            (inputs["class_names"][class_index], scores[class_index][region].mean().item(), region.numpy())
        )
    return segments


@pytest.mark.parametrize("candidate_labels", [None, ["red", "green", "blue", "grey", "sky", "road", "wall"]])
def test_pipeline_output_equals_the_full_resolution_postprocess(tiny_hub_model_dir, monkeypatch, candidate_labels):
    model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir).eval()
    segmenter = CascadeClipZeroShotSegmentationPipeline(
        model=model, processor=CascadeClipProcessor.from_pretrained(tiny_hub_model_dir)
    )
    image = random_image(150, 230, seed=7)
    expected = old_pipeline_segments(segmenter, image, candidate_labels)
    monkeypatch.setattr(sliding_window_module, "RESIZE_CHUNK_ELEMENTS", 1)
    segments = segmenter(image, candidate_labels=candidate_labels)
    assert len(segments) == len(expected) > 1
    for segment, (label, score, region) in zip(segments, expected, strict=True):
        assert segment["label"] == label
        assert segment["score"] == score
        np.testing.assert_array_equal(np.asarray(segment["mask"]), region.astype(np.uint8) * 255)


@pytest.mark.parametrize("mask_size", [None, 64])
def test_image_processor_post_process_equals_the_full_resolution_argmax(tiny_model, monkeypatch, mask_size):
    with torch.no_grad():
        outputs = tiny_model(pixel_values=torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(8)))
    processor = CascadeClipImageProcessor(mask_size=mask_size)
    sizes = [(150, 97), (41, 300)]
    expected = [
        calibrated_scores(outputs.logits[index][None], outputs.score_shift[index], size, mask_size)[0]
        for index, size in enumerate(sizes)
    ]
    monkeypatch.setattr(sliding_window_module, "RESIZE_CHUNK_ELEMENTS", 1)
    maps = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
    results = processor.post_process_semantic_segmentation(outputs, sizes, return_segmentation_scores=True)
    for class_map, result, scores in zip(maps, results, expected, strict=True):
        assert torch.equal(class_map, scores.argmax(dim=0))
        assert torch.equal(result.segmentation, class_map)
        assert torch.equal(result.segmentation_scores, scores)
    logits_only = processor.post_process_semantic_segmentation(outputs.logits, target_sizes=sizes)
    upsampled = F.interpolate(outputs.logits[1:], size=sizes[1], mode="bilinear", align_corners=False)[0]
    assert torch.equal(logits_only[1], upsampled.argmax(dim=0))
