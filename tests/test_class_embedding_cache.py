"""A vocabulary is embedded once: the in-memory cache of class embeddings (never stale), the batched embedding of
many prompts, and vocabulary files (`cascade-clip embed`, `segment --vocabulary`)."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.utils import logging as transformers_logging

from cascade_clip_hf import (
    CascadeClipForZeroShotSegmentation,
    CascadeClipProcessor,
    CascadeClipZeroShotSegmentationPipeline,
    modeling_cascade_clip,
    vocabulary,
)
from cascade_clip_hf.cli import main
from cascade_clip_hf.pipeline_cascade_clip import check_class_embeds
from cascade_clip_hf.vocabulary import (
    VOCABULARY_FORMAT,
    embed_vocabulary,
    load_vocabulary,
    same_class_pairs,
    text_tower_fingerprint,
    tokenize_class_prompts,
)

from .helpers import HUB_CLASSES, random_image, tiny_config


NAMES = ["cat", "dog", "grass"]
TEMPLATES = ["a photo of a {}.", "a {} in the scene."]


def count_text_tower_runs(model) -> list[int]:
    """A list that gets the number of prompts of every run of the model's text tower."""
    runs = []
    model.text_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: runs.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    return runs


def unbatched_class_embeddings(model, tokens: dict) -> torch.Tensor:
    """The class embeddings computed directly: every prompt in one batch, padded to the longest, no cache."""
    num_classes, num_templates, length = tokens["input_ids"].shape
    with torch.no_grad():
        text_embeds = model.text_encoder(
            input_ids=tokens["input_ids"].reshape(-1, length),
            attention_mask=tokens["attention_mask"].reshape(-1, length),
        ).text_embeds
    prompt_embeds = F.normalize(text_embeds, dim=-1).view(num_classes, num_templates, -1)
    return F.normalize(prompt_embeds.mean(dim=1), dim=-1)


def cached_class_embeddings(model, tokens: dict, class_names=None) -> torch.Tensor:
    with torch.no_grad():
        return model.get_class_embeddings(tokens["input_ids"], tokens["attention_mask"], class_names=class_names)


def test_a_repeated_vocabulary_runs_the_text_tower_once_and_returns_a_private_copy(tiny_model, clip_tokenizer):
    tokens = tokenize_class_prompts(clip_tokenizer, NAMES, TEMPLATES)
    runs = count_text_tower_runs(tiny_model)
    first = cached_class_embeddings(tiny_model, tokens, NAMES)
    expected = first.clone()
    first.zero_()  # the caller's copy: the cache keeps its own
    second = cached_class_embeddings(tiny_model, tokens, NAMES)
    assert runs == [len(NAMES) * len(TEMPLATES)]
    torch.testing.assert_close(second, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, unbatched_class_embeddings(tiny_model, tokens), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "names, templates",
    [(["cat", "dog", "sky"], TEMPLATES), (NAMES, ["a photo of a {}."]), (NAMES, ["a {} in the scene.", "a {}."])],
    ids=["other names", "fewer templates", "other templates"],
)
def test_other_names_or_templates_miss(tiny_model, clip_tokenizer, names, templates):
    cached_class_embeddings(tiny_model, tokenize_class_prompts(clip_tokenizer, NAMES, TEMPLATES))
    runs = count_text_tower_runs(tiny_model)
    tokens = tokenize_class_prompts(clip_tokenizer, names, templates)
    result = cached_class_embeddings(tiny_model, tokens)
    assert runs == [len(names) * len(templates)]
    torch.testing.assert_close(result, unbatched_class_embeddings(tiny_model, tokens), rtol=0, atol=1e-6)


def change_with_copy(model):
    with torch.no_grad():
        model.text_encoder.text_projection.weight.copy_(model.text_encoder.text_projection.weight.flip(0))


def change_with_load_state_dict(model):
    state = model.text_encoder.state_dict()
    state["text_model.final_layer_norm.bias"] = torch.randn_like(state["text_model.final_layer_norm.bias"])
    model.text_encoder.load_state_dict(state)


def optimizer_step(make_optimizer):
    def change_with_an_optimizer_step(model):
        weight = model.text_encoder.text_projection.weight
        weight.requires_grad_(True)
        optimizer = make_optimizer([weight])
        weight.grad = torch.randn_like(weight)
        optimizer.step()
        weight.requires_grad_(False)

    return change_with_an_optimizer_step


# Fused steps write the weights without counting a version: the cache must notice them all the same.
OPTIMIZER_STEPS = [
    optimizer_step(lambda weights: torch.optim.SGD(weights, lr=0.5)),
    optimizer_step(lambda weights: torch.optim.SGD(weights, lr=0.5, fused=True)),
    optimizer_step(lambda weights: torch.optim.AdamW(weights, lr=0.5, fused=True)),
    optimizer_step(lambda weights: torch.optim.Adam(weights, lr=0.5, foreach=True)),
    optimizer_step(lambda weights: torch.optim.Adagrad(weights, lr=0.5, fused=True)),
]


def change_with_a_dtype_round_trip(model):
    # The same tensor objects, perhaps at the same addresses, with untouched version counters, but rounded weights.
    model.to(torch.bfloat16).to(torch.float32)


@pytest.mark.parametrize(
    "change",
    [change_with_copy, change_with_load_state_dict, *OPTIMIZER_STEPS, change_with_a_dtype_round_trip],
    ids=["copy", "load_state_dict", "sgd", "sgd_fused", "adamw_fused", "adam_foreach", "adagrad_fused", "dtype"],
)
def test_changed_weights_miss(tiny_model, clip_tokenizer, change):
    torch.manual_seed(0)
    tokens = tokenize_class_prompts(clip_tokenizer, NAMES, TEMPLATES)
    before = cached_class_embeddings(tiny_model, tokens)
    fingerprint_before = text_tower_fingerprint(tiny_model)
    runs = count_text_tower_runs(tiny_model)
    change(tiny_model)
    after = cached_class_embeddings(tiny_model, tokens)
    assert len(runs) == 1
    assert not torch.allclose(after, before, rtol=0, atol=1e-6)
    torch.testing.assert_close(after, unbatched_class_embeddings(tiny_model, tokens), rtol=0, atol=1e-6)
    assert text_tower_fingerprint(tiny_model) != fingerprint_before


def test_a_model_made_in_inference_mode_caches_and_sees_its_weights_change(tiny_model, clip_tokenizer):
    # Inference tensors count no versions: the cache must still work, and still notice a write.
    tokens = tokenize_class_prompts(clip_tokenizer, NAMES, TEMPLATES)
    with torch.inference_mode():
        model = CascadeClipForZeroShotSegmentation(tiny_model.config).eval()
        model.load_state_dict(tiny_model.state_dict())
        assert model.text_encoder.text_projection.weight.is_inference()
        runs = count_text_tower_runs(model)
        first = cached_class_embeddings(model, tokens)
        again = cached_class_embeddings(model, tokens)
        assert len(runs) == 1 and torch.equal(first, again)
        change_with_load_state_dict(model)
        changed = cached_class_embeddings(model, tokens)
        model.text_encoder.text_projection.weight.copy_(model.text_encoder.text_projection.weight.flip(0))
        reordered = cached_class_embeddings(model, tokens)
    assert len(runs) == 3
    assert not torch.allclose(changed, first, rtol=0, atol=1e-6)
    assert not torch.allclose(reordered, changed, rtol=0, atol=1e-6)


def test_embeddings_made_under_autocast_are_not_given_outside_it(tiny_model, clip_tokenizer):
    tokens = tokenize_class_prompts(clip_tokenizer, NAMES, TEMPLATES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cached_class_embeddings(tiny_model, tokens)
    outside = cached_class_embeddings(tiny_model, tokens)
    assert outside.dtype == torch.float32
    torch.testing.assert_close(outside, unbatched_class_embeddings(tiny_model, tokens), rtol=0, atol=1e-6)


def test_same_classes_are_found_across_blocks_of_the_similarity_matrix(monkeypatch):
    torch.manual_seed(0)
    class_embeds = torch.randn(7, 16)
    class_embeds[6] = class_embeds[1] * 2  # same direction, in another block of 3 rows
    class_embeds[4] = class_embeds[3]  # within one block
    monkeypatch.setattr(vocabulary, "SIMILARITY_BLOCK_ROWS", 3)
    assert same_class_pairs(class_embeds) == ["'class 1' and 'class 6'", "'class 3' and 'class 4'"]


def test_numpy_class_embeddings_of_any_float_width_are_taken():
    embeddings = np.random.default_rng(0).normal(size=(3, 8)).astype(np.longdouble)
    taken = check_class_embeds(embeddings, 3, 8)
    assert taken.is_floating_point() and taken.shape == (3, 8)


def test_a_conversion_round_trip_misses_even_where_the_weights_get_their_old_addresses_back(
    tiny_model, clip_tokenizer, monkeypatch
):
    # What identifies the weights, as if the allocator gave every tensor its old address: a round trip changes none.
    monkeypatch.setattr(
        tiny_model,
        "text_tower_state",
        lambda: tuple((tensor._version, tensor.dtype) for tensor in tiny_model.text_encoder.parameters()),
    )
    tokens = tokenize_class_prompts(clip_tokenizer, NAMES, TEMPLATES)
    before = cached_class_embeddings(tiny_model, tokens)
    change_with_a_dtype_round_trip(tiny_model)
    after = cached_class_embeddings(tiny_model, tokens)
    assert not torch.allclose(after, before, rtol=0, atol=1e-6)
    torch.testing.assert_close(after, unbatched_class_embeddings(tiny_model, tokens), rtol=0, atol=1e-6)


def test_another_model_embeds_for_itself(tiny_model, clip_tokenizer):
    torch.manual_seed(1)
    other = CascadeClipForZeroShotSegmentation(tiny_config()).eval()
    tokens = tokenize_class_prompts(clip_tokenizer, NAMES, TEMPLATES)
    cached_class_embeddings(tiny_model, tokens)
    runs = count_text_tower_runs(other)
    result = cached_class_embeddings(other, tokens)
    assert len(runs) == 1
    torch.testing.assert_close(result, unbatched_class_embeddings(other, tokens), rtol=0, atol=1e-6)
    assert text_tower_fingerprint(other) != text_tower_fingerprint(tiny_model)


def test_embeddings_that_need_gradients_are_computed_afresh(tiny_model, clip_tokenizer):
    tokens = tokenize_class_prompts(clip_tokenizer, NAMES, TEMPLATES)
    tiny_model.text_encoder.requires_grad_(True)
    runs = count_text_tower_runs(tiny_model)
    for _ in range(2):
        result = tiny_model.get_class_embeddings(tokens["input_ids"], tokens["attention_mask"])
        assert result.requires_grad
    assert len(runs) == 2


def test_names_the_model_cannot_tell_apart_are_refused_on_every_call(tiny_model, clip_tokenizer):
    final_norm = tiny_model.text_encoder.text_model.final_layer_norm
    with torch.no_grad():  # a text tower that gives every prompt the same embedding
        final_norm.weight.zero_()
        final_norm.bias.fill_(1.0)
    tokens = tokenize_class_prompts(clip_tokenizer, NAMES, TEMPLATES)
    for _ in range(2):
        with pytest.raises(ValueError, match="same text embedding"):
            cached_class_embeddings(tiny_model, tokens, NAMES)


def test_batches_of_similar_length_give_the_unbatched_embeddings(tiny_model, clip_tokenizer, monkeypatch):
    monkeypatch.setattr(modeling_cascade_clip, "PROMPT_BATCH_SIZE", 3)
    names = ["cat", "a very long winding name of a thing with many many words", "dog", "sky blue", "grass"]
    templates = ["a {}.", "a photo of a {} in the middle of the scene."]
    tokens = tokenize_class_prompts(clip_tokenizer, names, templates)
    shapes = []
    hook = tiny_model.text_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    result = cached_class_embeddings(tiny_model, tokens)
    hook.remove()
    torch.testing.assert_close(result, unbatched_class_embeddings(tiny_model, tokens), rtol=0, atol=1e-6)
    assert [batch_size for batch_size, _ in shapes] == [3, 3, 3, 1]
    # Each batch is cut to its own longest prompt: the short ones never see the longest one's padding.
    assert shapes[0][1] < shapes[-1][1] == tokens["input_ids"].shape[-1]


def test_many_prompts_show_a_progress_bar_that_transformers_logging_silences(
    tiny_model, clip_tokenizer, monkeypatch, capfd
):
    monkeypatch.setattr(modeling_cascade_clip, "PROGRESS_BAR_MIN_PROMPTS", 3)
    was_enabled = transformers_logging.is_progress_bar_enabled()
    try:
        transformers_logging.enable_progress_bar()
        cached_class_embeddings(tiny_model, tokenize_class_prompts(clip_tokenizer, NAMES, TEMPLATES))
        assert "Embedding class prompts" in capfd.readouterr().err
        transformers_logging.disable_progress_bar()
        cached_class_embeddings(tiny_model, tokenize_class_prompts(clip_tokenizer, ["sky", "road"], TEMPLATES))
        assert "Embedding class prompts" not in capfd.readouterr().err
    finally:
        (transformers_logging.enable_progress_bar if was_enabled else transformers_logging.disable_progress_bar)()


@pytest.fixture
def hub_pipeline(tiny_hub_model_dir) -> CascadeClipZeroShotSegmentationPipeline:
    model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir).eval()
    processor = CascadeClipProcessor.from_pretrained(tiny_hub_model_dir)
    return CascadeClipZeroShotSegmentationPipeline(model=model, processor=processor)


def class_map(segments: list[dict], names: list[str]) -> np.ndarray:
    masks = np.stack([np.asarray(segment["mask"]) > 0 for segment in segments])
    ids = np.array([names.index(segment["label"]) for segment in segments])
    assert (masks.sum(axis=0) == 1).all()
    return ids[masks.argmax(axis=0)]


def test_the_pipeline_embeds_once_and_takes_a_vocabulary_with_its_seen_classes(hub_pipeline):
    names = ["bicycle", "red thing", "ocean", "green thing"]  # two seen classes, whose scores are shifted
    image = random_image(40, 56, seed=3)
    runs = count_text_tower_runs(hub_pipeline.model)
    from_names = [hub_pipeline(image, candidate_labels=names) for _ in range(2)]
    assert len(runs) == 1
    vocabulary = embed_vocabulary(hub_pipeline.model, hub_pipeline.processor, names)
    assert vocabulary.seen_classes == ["red thing", "green thing"]
    from_vocabulary = hub_pipeline(image, candidate_labels=names, class_embeds=vocabulary.class_embeds)
    for segments in (from_names[1], from_vocabulary):
        assert [(s["label"], s["score"]) for s in segments] == [(s["label"], s["score"]) for s in from_names[0]]
        np.testing.assert_array_equal(class_map(segments, names), class_map(from_names[0], names))
    with pytest.raises(ValueError, match=r"class_embeds must be a tensor of shape \(3, 16\)"):
        hub_pipeline(image, candidate_labels=names[:3], class_embeds=vocabulary.class_embeds)


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed, (height, width) in enumerate([(50, 80), (64, 40), (33, 47)]):
        random_image(height, width, seed=seed).save(folder / f"photo{seed}.png")
    return folder


@pytest.fixture(scope="module")
def other_text_tower_model_dir(tmp_path_factory, tiny_hub_model_dir):
    """The tiny hub model with other text-tower weights (and everything else the same)."""
    model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir)
    with torch.no_grad():
        model.text_encoder.text_projection.weight.mul_(-1)
    path = tmp_path_factory.mktemp("other_text_tower") / "model"
    model.save_pretrained(path)
    CascadeClipProcessor.from_pretrained(tiny_hub_model_dir).save_pretrained(path)
    return path


def embed(model_dir, labels: str, output) -> int:
    return main(["embed", "--labels", labels, "--model", str(model_dir), "--output", str(output)])


def segment(model_dir, photos, output, *classes: str) -> int:
    return main(["segment", str(photos), "--model", str(model_dir), "--output", str(output), *classes])


def test_embed_writes_a_vocabulary_that_segments_as_its_labels_do(tmp_path, photos, tiny_hub_model_dir):
    labels = "bicycle,red thing,ocean"
    vocabulary_file = tmp_path / "vocab.safetensors"
    assert embed(tiny_hub_model_dir, labels, vocabulary_file) == 0
    with safe_open(vocabulary_file, framework="pt") as file:
        metadata = file.metadata()
        assert file.get_tensor("class_embeds").shape == (3, 16)
    assert metadata["format"] == VOCABULARY_FORMAT
    assert json.loads(metadata["class_names"]) == labels.split(",")
    assert json.loads(metadata["seen_classes"]) == ["red thing"]
    processor = CascadeClipProcessor.from_pretrained(tiny_hub_model_dir)
    assert json.loads(metadata["templates"]) == processor.templates
    model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_hub_model_dir)
    assert metadata["text_tower_fingerprint"] == text_tower_fingerprint(model)

    assert segment(tiny_hub_model_dir, photos, tmp_path / "labels", "--labels", labels) == 0
    assert segment(tiny_hub_model_dir, photos, tmp_path / "vocab", "--vocabulary", str(vocabulary_file)) == 0
    for path in sorted(photos.iterdir()):
        name = f"{path.name}_classes.png"
        from_labels = np.asarray(PIL.Image.open(tmp_path / "labels" / name))
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "vocab" / name)), from_labels)
        assert json.loads((tmp_path / "vocab" / f"{path.name}.json").read_text())["class_names"] == labels.split(",")


def test_segment_with_labels_runs_the_text_tower_once_for_all_images(
    tmp_path, photos, tiny_hub_model_dir, monkeypatch
):
    runs = []
    get_text_features = CascadeClipForZeroShotSegmentation.get_text_features

    def counted(self, *args, **kwargs):
        runs.append(1)
        return get_text_features(self, *args, **kwargs)

    monkeypatch.setattr(CascadeClipForZeroShotSegmentation, "get_text_features", counted)
    assert segment(tiny_hub_model_dir, photos, tmp_path / "out", "--labels", ",".join(HUB_CLASSES)) == 0
    assert len(list((tmp_path / "out").glob("*_classes.png"))) == 3
    assert len(runs) == 1


def errors_of(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]


def test_a_vocabulary_of_another_model_is_refused_in_one_line(
    tmp_path, photos, tiny_hub_model_dir, other_text_tower_model_dir, caplog
):
    vocabulary_file = tmp_path / "vocab.safetensors"
    assert embed(tiny_hub_model_dir, "bicycle,ocean", vocabulary_file) == 0
    code = segment(other_text_tower_model_dir, photos, tmp_path / "out", "--vocabulary", str(vocabulary_file))
    assert code == 2
    [error] = errors_of(caplog)
    assert "\n" not in error and str(vocabulary_file) in error and "re-run `cascade-clip embed`" in error
    assert not (tmp_path / "out").exists()


def test_a_damaged_or_foreign_vocabulary_file_is_named_in_one_line(tmp_path, photos, tiny_hub_model_dir, caplog):
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"class_embeds": torch.zeros(2, 16)}, foreign)
    for path in (damaged, foreign, tmp_path / "missing.safetensors"):
        caplog.clear()
        assert segment(tiny_hub_model_dir, photos, tmp_path / "out", "--vocabulary", str(path)) == 2
        [error] = errors_of(caplog)
        assert error.startswith(f"error: {path}:") and "\n" not in error
    with pytest.raises(ValueError, match="not written by `cascade-clip embed`"):
        load_vocabulary(foreign)


def test_labels_and_vocabulary_together_are_one_usage_error(tmp_path, photos, tiny_hub_model_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        segment(tiny_hub_model_dir, photos, tmp_path / "out", "--labels", "cat", "--vocabulary", "v.safetensors")
    assert exit_info.value.code == 2
    assert "not allowed with argument --labels" in capsys.readouterr().err


def test_embed_never_replaces_a_file_it_did_not_write(tmp_path, tiny_hub_model_dir, caplog):
    users_file = tmp_path / "vocab.safetensors"
    users_file.write_text("the user's own file")
    assert embed(tiny_hub_model_dir, "cat,dog", users_file) == 2
    assert users_file.read_text() == "the user's own file"
    assert "refusing to write" in errors_of(caplog)[0]
    ours = tmp_path / "ours.safetensors"
    assert embed(tiny_hub_model_dir, "cat,dog", ours) == 0
    assert embed(tiny_hub_model_dir, "cat,sky", ours) == 0  # its own earlier output is replaced
    assert load_vocabulary(ours).class_names == ["cat", "sky"]
