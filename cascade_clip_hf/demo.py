"""A Gradio app: upload an image, name some classes, see the segmentation with its legend (Space-ready)."""

from pathlib import Path

import gradio as gr
import PIL.Image

from .segmenter import DEMO_MODEL, load_segmenter, vocabulary
from .visualization import class_fractions, overlay_with_legend, segmentation_from_masks
from .vocabulary import check_class_names, unreadable_names_warning


def parse_labels(text: str | None) -> list[str] | None:
    """`"cat, grass, sky"` -> the class names; blank -> None (the model's default vocabulary)."""
    if not text or not text.strip():
        return None
    return check_class_names([name.strip() for name in text.split(",")], "the class names box")


def build_demo(model_name: str, device: str = "cpu", example_labels: str = "", dtype: str = "float32") -> gr.Blocks:
    """
    The app for one model (folder or Hub id) in `dtype` (see `INFERENCE_DTYPES`); its `segment` endpoint takes an
    image and comma-separated names. `example_labels` fill the names box, except for a toy model (`toy_world`),
    which reads none of a photo's words and starts from its own vocabulary.
    """
    segmenter = load_segmenter(model_name, device, dtype)

    def segment(image_path, labels_text):
        if image_path is None:
            raise gr.Error("Upload an image first.")
        try:
            labels = parse_labels(labels_text)
            # The pipeline logs this once, on the server; the page shows it with every run that has such names.
            warning = unreadable_names_warning(segmenter.processor.tokenizer, labels) if labels else None
            if warning:
                gr.Warning(warning)
            image = PIL.Image.fromarray(segmenter.image_processor.read_image(image_path))
            segments = segmenter(image, candidate_labels=labels)
        except ValueError as error:
            raise gr.Error(str(error)) from error
        class_names = vocabulary(segmenter, labels)
        segmentation = segmentation_from_masks(segments, class_names, image.size)
        shares = {name: share for name, share in class_fractions(segmentation, class_names).items() if share > 0}
        return overlay_with_legend(image, segmentation, class_names), shares

    config = segmenter.model.config
    toy_notice = (
        "\n\n**A toy model**: it knows only the toy world's scenes (e.g. `examples/scenes`) and classes (such as "
        f"{', '.join(config.class_names[:3])}), not photos; set `CASCADE_CLIP_MODEL` to a converted or trained "
        "Cascade-CLIP for those."
        if config.toy_world
        else ""
    )
    # The shipped model by what it is, not by the server's path to the package.
    shipped = Path(model_name).resolve() == DEMO_MODEL.resolve()
    shown_model = "the shipped toy-world model (`cascade_clip_hf/demo_model`)" if shipped else f"`{model_name}`"
    with gr.Blocks(title="Cascade-CLIP zero-shot segmentation") as demo:
        gr.Markdown(
            "# Cascade-CLIP zero-shot segmentation\n"
            f"Model: {shown_model} ({dtype}). Name any classes, separated by commas; leave the box empty for the "
            "model's own vocabulary. Each pixel goes to the class that scores best there." + toy_notice
        )
        with gr.Row():
            # The uploaded file as it is, read as the pipeline and the command line read it (any mode, EXIF).
            image_input = gr.Image(type="filepath", image_mode=None, label="Image")
            overlay_output = gr.Image(type="pil", format="png", label="Segmentation")
        placeholder = ", ".join(config.class_names[:3]) if config.toy_world else "cat, grass, sky"
        labels_input = gr.Textbox(
            label="Class names", value="" if config.toy_world else example_labels, placeholder=placeholder
        )
        run_button = gr.Button("Segment", variant="primary")
        shares_output = gr.Label(label="Share of the pixels")
        run_button.click(
            segment, inputs=[image_input, labels_input], outputs=[overlay_output, shares_output], api_name="segment"
        )
    return demo
