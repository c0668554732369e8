"""The model built from a transformers CLIP checkpoint: initialisation, vocabulary, round trips and bad input."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForSemanticSegmentation, CLIPModel

from cascade_clip_hf import CascadeClipForZeroShotSegmentation, CascadeClipProcessor
from cascade_clip_hf.image_processing_cascade_clip import CascadeClipImageProcessor
from cascade_clip_hf.processing_cascade_clip import tokenize_class_prompts
from cascade_clip_hf.sliding_window import window_starts

from .helpers import TINY_TEXT_CONFIG, tiny_cascade, tiny_config


def test_from_clip_pretrained_resizes_positions_and_folds_class_token(tiny_clip_dir, tiny_model_dir):
    clip = CLIPModel.from_pretrained(tiny_clip_dir)
    model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_model_dir)
    clip_embeddings = clip.vision_model.embeddings
    positions = model.vision_encoder.clip.vision_model.embeddings.position_embedding.weight
    assert positions.shape == (1 + 4 * 4, 32)  # 64-pixel images, 16-pixel patches
    expected_grid = F.interpolate(
        clip_embeddings.position_embedding.weight[1:].reshape(1, 2, 2, 32).permute(0, 3, 1, 2),
        size=(4, 4),
        mode="bilinear",
        align_corners=False,
    )
    torch.testing.assert_close(positions[1:], expected_grid.flatten(2)[0].t())
    torch.testing.assert_close(
        positions[0], clip_embeddings.position_embedding.weight[0] + clip_embeddings.class_embedding
    )
    torch.testing.assert_close(
        model.vision_encoder.clip.vision_model.encoder.layers[3].mlp.fc1.weight,
        clip.vision_model.encoder.layers[3].mlp.fc1.weight,
    )
    torch.testing.assert_close(model.text_encoder.text_projection.weight, clip.text_projection.weight)


def test_from_clip_pretrained_freezes_like_the_original(tiny_clip_dir):
    model = CascadeClipForZeroShotSegmentation.from_clip_pretrained(str(tiny_clip_dir), image_size=32)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert "vision_encoder.prompts.embeddings" in trainable
    assert "vision_encoder.prompts.projection.weight" in trainable
    assert "vision_encoder.prompt_layernorm.weight" in trainable
    assert "decode_head.aggregation.stage_weights.0" in trainable
    assert "decode_head.decoders.2.layers.0.cross_attention.q_proj.weight" in trainable
    assert not any(
        name.startswith(("vision_encoder.clip.", "text_encoder.", "vision_encoder.taps.")) for name in trainable
    )
    assert model.config.num_labels == 0


def test_taps_random_by_default_or_from_clip(tiny_clip_dir):
    clip = CLIPModel.from_pretrained(tiny_clip_dir)
    random_taps = CascadeClipForZeroShotSegmentation.from_clip_pretrained(str(tiny_clip_dir), image_size=32)
    clip_taps = CascadeClipForZeroShotSegmentation.from_clip_pretrained(
        str(tiny_clip_dir), image_size=32, init_taps_from_clip=True
    )
    assert not torch.equal(random_taps.vision_encoder.taps[0].projection.weight, clip.visual_projection.weight)
    for tap in clip_taps.vision_encoder.taps:
        torch.testing.assert_close(tap.projection.weight, clip.visual_projection.weight)


def test_initial_stage_weights_are_gaussian(tiny_model):
    expected = torch.tensor([math.exp(-2.0), math.exp(-0.5), 1.0])
    for weights in tiny_model.decode_head.aggregation.stage_weights:
        torch.testing.assert_close(weights.data, expected)


def test_default_vocabulary_is_the_template_ensemble(tiny_model, clip_tokenizer):
    config = tiny_model.config
    with torch.no_grad():
        per_template = [
            tiny_model.get_class_embeddings(**tokenize_class_prompts(clip_tokenizer, config.class_names, [t]))
            for t in config.templates
        ]
    expected = F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)
    torch.testing.assert_close(tiny_model.class_embeddings, expected)
    assert config.seen_class_ids == [0, 2]


def test_default_vocabulary_equals_passing_the_text(tiny_model, clip_tokenizer):
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        default = tiny_model(pixel_values=pixel_values)
        text = tokenize_class_prompts(clip_tokenizer, tiny_model.config.class_names, tiny_model.config.templates)
        explicit = tiny_model(pixel_values=pixel_values, **text)
    torch.testing.assert_close(default.logits, explicit.logits)
    torch.testing.assert_close(default.score_shift, torch.tensor([[0.1, 0.0, 0.1, 0.0]] * 2))
    torch.testing.assert_close(explicit.score_shift, torch.zeros(2, 4))


def test_transductive_models_shift_nothing(tiny_model):
    tiny_model.config.setting = "transductive"
    with torch.no_grad():
        outputs = tiny_model(pixel_values=torch.randn(1, 3, 64, 64))
    assert torch.equal(outputs.score_shift, torch.zeros(1, 4))


def test_output_shapes(tiny_model):
    with torch.no_grad():
        outputs = tiny_model(pixel_values=torch.randn(2, 3, 64, 96), output_hidden_states=True)
    assert outputs.logits.shape == (2, 4, 4, 6)
    assert outputs.decoder_logits.shape == (2, 3, 4, 4, 6)
    torch.testing.assert_close(outputs.decoder_logits.sum(dim=1), outputs.logits)
    assert outputs.class_embeds.shape == (2, 4, 16)
    assert outputs.score_shift.shape == (2, 4)
    torch.testing.assert_close(outputs.image_embeds.norm(dim=-1), torch.ones(2))
    assert len(outputs.hidden_states) == 13
    assert outputs.hidden_states[0].shape == (2, 1 + 3 + 24, 32)
    assert outputs.loss is None


def test_fewer_prompted_layers_drop_the_prompts(tiny_clip_dir):
    model = CascadeClipForZeroShotSegmentation.from_clip_pretrained(
        str(tiny_clip_dir), image_size=32, num_prompt_layers=4, num_prompt_tokens=2, id2label={0: "cat"}
    ).eval()
    with torch.no_grad():
        outputs = model(pixel_values=torch.randn(1, 3, 32, 32), output_hidden_states=True)
    # The embedding output (with the first layer's prompts), then each layer's output.
    lengths = [hidden.shape[1] for hidden in outputs.hidden_states]
    assert lengths == [1 + 2 + 4] * 5 + [1 + 4] * 8


def test_save_load_round_trip_through_safetensors(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    weights = load_file(str(tmp_path / "model.safetensors"))
    torch.testing.assert_close(weights["class_embeddings"], tiny_model.class_embeddings)
    reloaded = AutoModelForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, CascadeClipForZeroShotSegmentation)
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(pixel_values=pixel_values).logits, tiny_model(pixel_values=pixel_values).logits
        )
    assert reloaded.config.id2label == tiny_model.config.id2label


def test_loss_ignores_nothing_but_ignore_index(tiny_model):
    labels = torch.full((1, 64, 64), 255)
    labels[0, :32] = 1
    with torch.no_grad():
        outputs = tiny_model(pixel_values=torch.randn(1, 3, 64, 64), labels=labels)
    torch.testing.assert_close(outputs.loss, outputs.mask_loss + outputs.dice_loss)
    assert outputs.loss > 0


def test_chunked_loss_equals_one_chunk(tiny_model, monkeypatch):
    import cascade_clip_hf.modeling_cascade_clip as modeling

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 4, 4, requires_grad=True)
    labels = torch.randint(0, 4, (2, 48, 40))
    labels[0, :10] = 255
    results = []
    for chunk_elements in (2**24, 48 * 40):  # all classes at once, then one class per chunk
        monkeypatch.setattr(modeling, "LOSS_CHUNK_ELEMENTS", chunk_elements)
        logits.grad = None
        mask_loss, dice = modeling.segmentation_loss(logits, labels, tiny_model.config)
        (mask_loss + dice).backward()
        results.append((mask_loss.detach(), dice.detach(), logits.grad.clone()))
    for one, many in zip(*results, strict=True):
        torch.testing.assert_close(many, one, rtol=1e-5, atol=1e-7)
    assert results[0][2].abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model_dir):
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.randint(0, 4, (2, 64, 64))
    gradients = []
    for checkpointing in (False, True):
        model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_model_dir)
        model.freeze_pretrained()
        if checkpointing:
            model.activation_checkpointing_enable()
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        torch.manual_seed(1)  # the same stochastic-depth masks in both runs
        model(pixel_values=pixel_values, labels=labels).loss.backward()
        gradients.append(model.vision_encoder.prompts.embeddings.grad.clone())
    torch.testing.assert_close(gradients[0], gradients[1])
    assert gradients[0].abs().sum() > 0


def test_stochastic_depth_only_in_training_and_shared_across_the_batch(tiny_model):
    image = torch.randn(1, 3, 64, 64)
    batch = image.expand(3, -1, -1, -1)
    with torch.no_grad():
        reference = tiny_model.eval()(pixel_values=image).logits
        tiny_model.train()
        for module in tiny_model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        torch.manual_seed(0)
        training = tiny_model(pixel_values=batch).logits
    layers = tiny_model.vision_encoder.clip.vision_model.encoder.layers
    assert layers[0].drop_path_rate == 0.0
    assert layers[-1].drop_path_rate == pytest.approx(tiny_model.config.vision_drop_path_rate)
    assert not torch.allclose(training[0], reference[0])
    # the original's mask falls on token positions, the same for every image of the batch
    torch.testing.assert_close(training[1], training[0])
    torch.testing.assert_close(training[2], training[0])


def test_sliding_window_starts_cover_the_image():
    assert window_starts(80, 64, 48) == [0, 16]
    assert window_starts(512, 512, 426) == [0]
    assert window_starts(683, 512, 426) == [0, 171]
    assert window_starts(300, 512, 426) == [0]


def test_sliding_window_batches_equal_one_by_one(tiny_model):
    pixel_values = torch.randn(2, 3, 70, 150)
    all_at_once = tiny_model.sliding_window_inference(pixel_values, crop_size=64, stride=40)
    one_at_a_time = tiny_model.sliding_window_inference(pixel_values, crop_size=64, stride=40, window_batch_size=1)
    torch.testing.assert_close(all_at_once, one_at_a_time)
    assert all_at_once.shape == (2, 4, 70, 150)
    resized = tiny_model.sliding_window_inference(pixel_values, output_size=(35, 75), crop_size=64, stride=40)
    assert resized.shape == (2, 4, 35, 75)


def test_sliding_window_over_images_of_different_sizes(tiny_model):
    images = [torch.randn(3, 70, 150), torch.randn(3, 64, 64), torch.randn(3, 100, 80)]
    together = tiny_model.sliding_window_inference(
        images, output_size=[(35, 75), (64, 64), (50, 40)], crop_size=64, stride=40, window_batch_size=4
    )
    for image, scores in zip(images, together, strict=True):
        alone = tiny_model.sliding_window_inference(
            image[None], output_size=tuple(scores.shape[-2:]), crop_size=64, stride=40
        )[0]
        torch.testing.assert_close(scores, alone, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one output size"):
        tiny_model.sliding_window_inference(torch.randn(2, 3, 64, 64), output_size=[(10, 10), (20, 20)])


def test_processor_to_post_processing(tiny_model, clip_tokenizer):
    processor = CascadeClipProcessor(
        CascadeClipImageProcessor(size={"shortest_edge": 64, "longest_edge": 256}),
        clip_tokenizer,
        templates=["a photo of a {}."],
        seen_classes=["cat", "grass"],
    )
    image = torch.randint(0, 256, (48, 80, 3), dtype=torch.uint8).numpy()
    inputs = processor(images=image, text=["grass", "bicycle", "Cat"])
    assert inputs["pixel_values"].shape == (1, 3, 64, 107)
    with torch.no_grad():
        outputs = tiny_model(**inputs)
    torch.testing.assert_close(outputs.score_shift, torch.tensor([[0.1, 0.0, 0.1]]))
    segmentation = processor.post_process_semantic_segmentation(outputs, target_sizes=[(48, 80)])[0]
    assert segmentation.shape == (48, 80)
    scores = (
        F.interpolate(outputs.logits, size=(48, 80), mode="bilinear").sigmoid()[0]
        - outputs.score_shift[0, :, None, None]
    )
    assert torch.equal(segmentation, scores.argmax(dim=0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"pixel_values": torch.randn(3, 64, 64)}, "pixel_values must have shape"),
        ({"pixel_values": torch.randn(1, 1, 64, 64)}, "pixel_values must have shape"),
        ({"pixel_values": torch.randn(1, 3, 8, 64)}, "smaller than one"),
        ({"pixel_values": torch.zeros(1, 3, 64, 64, dtype=torch.uint8)}, "floating point"),
        (
            {"pixel_values": torch.randn(1, 3, 64, 64), "class_embeds": torch.randn(3, 7)},
            "class_embeds must be a tensor",
        ),
        ({"pixel_values": torch.randn(1, 3, 64, 64), "class_embeds": torch.randn(0, 16)}, "At least one class"),
        (
            {"pixel_values": torch.randn(1, 3, 64, 64), "class_embeds": torch.ones(3, 16, dtype=torch.int64)},
            "class_embeds must hold floating-point numbers",
        ),
        (
            {"pixel_values": torch.randn(1, 3, 64, 64), "class_embeds": torch.full((3, 16), float("inf"))},
            "class_embeds holds NaN or infinite values",
        ),
        ({"pixel_values": torch.randn(1, 3, 64, 64), "input_ids": torch.ones(4, dtype=torch.long)}, "input_ids must"),
        (
            {
                "pixel_values": torch.randn(1, 3, 64, 64),
                "class_embeds": torch.randn(2, 16),
                "input_ids": torch.ones(2, 3, dtype=torch.long),
            },
            "either input_ids or class_embeds",
        ),
        (
            {"pixel_values": torch.randn(1, 3, 64, 64), "seen_class_mask": torch.ones(3, dtype=torch.bool)},
            "one entry per class",
        ),
        ({"pixel_values": torch.randn(1, 3, 64, 64), "labels": torch.full((1, 64, 64), 7)}, "neither class indices"),
        (
            {"pixel_values": torch.randn(1, 3, 64, 64), "labels": torch.zeros(2, 64, 64, dtype=torch.long)},
            "labels must have shape",
        ),
    ],
)
def test_bad_inputs_get_clear_errors(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_model(**kwargs)


def test_model_without_vocabulary_asks_for_classes():
    config = tiny_config(text_config={**TINY_TEXT_CONFIG, "num_hidden_layers": 1}, num_prompt_tokens=2)
    model = CascadeClipForZeroShotSegmentation(config).eval()
    with pytest.raises(ValueError, match="no default vocabulary"):
        model(pixel_values=torch.randn(1, 3, 32, 32))
    with torch.no_grad():
        assert model(pixel_values=torch.randn(1, 3, 32, 32), class_embeds=torch.randn(5, 16)).logits.shape == (
            1,
            5,
            2,
            2,
        )


def test_set_vocabulary_checks_shapes(tiny_model):
    with pytest.raises(ValueError, match=r"class_embeds must be a tensor of shape \(2, 16\)"):
        tiny_model.set_vocabulary(["a", "b"], torch.randn(3, 16))
    tiny_model.set_vocabulary(["a", "b"], torch.randn(2, 16), seen_class_ids=[1])
    assert tiny_model.config.id2label == {0: "a", 1: "b"}
    assert tiny_model.class_embeddings.shape == (2, 16)


def test_no_cascade_stages_leaves_a_single_decoder_on_the_last_layer(tiny_clip_dir):
    model = tiny_cascade(tiny_clip_dir, id2label={0: "cat", 1: "sky"}, cascade_stages=[], num_prompt_tokens=2)
    assert model.config.num_decoders == 1 and model.config.extract_layers == []
    assert len(model.decode_head.decoders) == 1 and len(model.vision_encoder.taps) == 0
    outputs = model(torch.randn(2, 3, 64, 64), labels=torch.randint(0, 2, (2, 64, 64)))
    assert outputs.logits.shape == (2, 2, 4, 4) and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    assert model.decode_head.decoders[0].layers[0].fc1.weight.grad.abs().sum() > 0


def test_decoder_cross_attention_switches_implementation_and_eager_is_the_explicit_formula(tiny_model):
    attention = tiny_model.decode_head.decoders[0].layers[0].cross_attention
    torch.manual_seed(0)
    queries, visual_tokens = torch.randn(2, 5, 16), torch.randn(2, 9, 16)
    with torch.no_grad():
        probs = attention.attention_logits(queries, visual_tokens).softmax(dim=-1)
        values = attention.project(attention.v_proj, visual_tokens)
        explicit = attention.out_proj((probs @ values).transpose(1, 2).reshape(2, 5, -1))
        tiny_model.set_attn_implementation("eager")
        assert attention.config._attn_implementation == "eager"
        assert torch.equal(attention(queries, visual_tokens), explicit)
        tiny_model.set_attn_implementation("sdpa")
        torch.testing.assert_close(attention(queries, visual_tokens), explicit, rtol=0, atol=1e-6)


def test_standard_feature_methods(tiny_model, clip_tokenizer):
    text = tokenize_class_prompts(clip_tokenizer, ["cat", "dog"], ["a photo of a {}.", "a {}."])
    with torch.no_grad():
        per_prompt = tiny_model.get_text_features(text["input_ids"].flatten(0, 1), output_hidden_states=True)
        class_embeds = tiny_model.get_class_embeddings(**text)
        image = tiny_model.get_image_features(torch.randn(2, 3, 64, 64))
    assert per_prompt.pooler_output.shape == (4, 16) and per_prompt.hidden_states is not None
    averaged = F.normalize(F.normalize(per_prompt.pooler_output, dim=-1).view(2, 2, -1).mean(dim=1), dim=-1)
    torch.testing.assert_close(class_embeds, averaged)
    assert image.pooler_output.shape == (2, 16) and image.last_hidden_state.shape == (2, 1 + 3 + 16, 32)
    assert tiny_model.get_input_embeddings() is tiny_model.text_encoder.text_model.embeddings.token_embedding


def test_builds_on_the_meta_device_and_warns_about_the_old_hidden_states_name(tiny_model):
    with torch.device("meta"):
        model = CascadeClipForZeroShotSegmentation(tiny_model.config)
    assert next(model.parameters()).device.type == "meta"
    with torch.no_grad():
        outputs = tiny_model(pixel_values=torch.randn(1, 3, 64, 64), output_hidden_states=True)
    with pytest.warns(FutureWarning, match="hidden_states"):
        assert outputs.vision_hidden_states is outputs.hidden_states


def test_loads_in_bfloat16_and_with_a_device_map(tiny_model_dir):
    model = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        outputs = model(pixel_values=torch.randn(1, 3, 64, 64))
        scores = model.sliding_window_inference(torch.randn(1, 3, 64, 80))
    assert outputs.logits.dtype == torch.bfloat16 and torch.isfinite(outputs.logits.float()).all()
    assert torch.isfinite(scores.float()).all()
    mapped = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_model_dir, device_map="auto").eval()
    reference = CascadeClipForZeroShotSegmentation.from_pretrained(tiny_model_dir).eval()
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            mapped(pixel_values=pixel_values).logits, reference(pixel_values=pixel_values).logits
        )
