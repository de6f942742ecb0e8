"""The page's layout, and which handler each button and menu calls.

Left: the image (upload or the example), the model (and an optional weights file), the
target layer and the input size. Right: the top classes, the class to explain, the
methods and the scores checkbox. Below: one overlay per method on one colour scale, the
scores with the deletion curves, and the downloads.
"""

from __future__ import annotations

import gradio as gr

from pytorch_grad_cam.app.handlers import ModelSelection, PageHandlers
from pytorch_grad_cam.app.models import DEFAULT_KEY, model_choices
from pytorch_grad_cam.app.plots import colour_scale_html
from pytorch_grad_cam.app.service import INPUT_SIDES, method_names

TITLE = "gradcam: compare explanations"
CSS = """
.colour-scale { display: flex; align-items: center; gap: 8px; max-width: 480px; }
.colour-scale + p { font-size: 0.9em; opacity: 0.8; margin: 4px 0 0 0; }
"""
INTRO = (
    "# gradcam: what does the model look at?\n"
    "Upload an image (or keep the example), pick a class and one or more methods, and "
    "compare their maps side by side. ScoreCAM and AblationCAM run one forward pass per "
    "channel: use a smaller input size for a quick look, and Stop to cancel."
)
SCORES_INFO = (
    "Deletion and insertion AUC (RISE, {steps} steps each) and the confidence change "
    "(Grad-CAM++), on the class's probability: about {passes} forward passes per map."
)


def build_page(handlers: PageHandlers) -> gr.Blocks:
    """The app's page, wired to ``handlers``."""
    steps = handlers.service.metric_steps
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown(INTRO)
        image_state = gr.State(None)
        model_state = gr.State(ModelSelection())
        with gr.Row():
            with gr.Column(scale=1):
                preview = gr.Image(label="Image", interactive=False, format="png", height=260)
                upload = gr.File(
                    label="Upload an image",
                    file_types=["image"],
                    type="filepath",
                    height=120,
                    elem_id="upload",
                )
                example = gr.Button("Use the example image (a cat and an espresso)", size="sm")
                model_menu = gr.Dropdown(
                    choices=model_choices(),
                    value=DEFAULT_KEY,
                    label="Model",
                    info="or type torchvision:NAME or timm:NAME (add :random for untrained)",
                    allow_custom_value=True,
                    elem_id="model",
                )
                with gr.Accordion("Weights file for the model (optional)", open=False):
                    weights = gr.File(
                        label="A checkpoint (state_dict) for the model's architecture",
                        file_types=[".pt", ".pth", ".bin", ".ckpt"],
                        type="filepath",
                        height=120,
                        elem_id="weights",
                    )
                layer_menu = gr.Dropdown(label="Target layer", elem_id="layer")
                input_side = gr.Dropdown(
                    choices=[(f"{side} px", side) for side in INPUT_SIDES],
                    value=INPUT_SIDES[0],
                    label="Model input: shorter side",
                    info="smaller is faster (and the maps coarser)",
                    elem_id="input-side",
                )
            with gr.Column(scale=1):
                top_classes = gr.Label(
                    label="Top 5 classes (click one to explain it)",
                    num_top_classes=5,
                    elem_id="top-classes",
                )
                class_menu = gr.Dropdown(
                    label="Class to explain (type to search)",
                    filterable=True,
                    elem_id="class",
                )
                methods = gr.CheckboxGroup(
                    choices=method_names(), value=["GradCAM"], label="Methods", elem_id="methods"
                )
                with_scores = gr.Checkbox(
                    label="Faithfulness scores",
                    info=SCORES_INFO.format(steps=steps, passes=2 * steps + 2),
                    elem_id="with-scores",
                )
                with gr.Row():
                    run = gr.Button("Explain", variant="primary", elem_id="explain")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                page_notes = gr.Markdown(elem_id="notes")
        gr.HTML(colour_scale_html(), elem_id="colour-scale")
        overlays = gr.Gallery(
            label="Overlays",
            columns=3,
            format="png",
            height="auto",
            object_fit="contain",
            elem_id="overlays",
        )
        with gr.Row():
            scores = gr.Markdown(elem_id="scores")
            curves = gr.Plot(label="Deletion curves", format="png", elem_id="curves")
        downloads = gr.File(
            label="Downloads: PNG overlays, .npy maps ([0, 1], the image's size), scores.csv",
            file_count="multiple",
            interactive=False,
            elem_id="downloads",
        )

        prediction = [top_classes, class_menu, page_notes]
        page.load(
            handlers.start,
            inputs=[input_side],
            outputs=[image_state, preview, model_state, layer_menu, *prediction],
        )
        upload.upload(
            handlers.upload_image,
            inputs=[upload, model_state, input_side],
            outputs=[image_state, preview, *prediction],
        )
        example.click(
            handlers.use_example,
            inputs=[model_state, input_side],
            outputs=[image_state, preview, *prediction],
        )
        for event in (model_menu.input, weights.upload, weights.clear):
            event(
                handlers.change_model,
                inputs=[model_menu, weights, image_state, input_side],
                outputs=[model_state, layer_menu, *prediction],
            )
        input_side.input(
            handlers.change_input_side,
            inputs=[image_state, model_state, input_side],
            outputs=top_classes,
        )
        top_classes.select(handlers.pick_top_class, inputs=None, outputs=class_menu)
        explaining = run.click(
            handlers.explain,
            inputs=[
                image_state,
                model_state,
                layer_menu,
                class_menu,
                methods,
                with_scores,
                input_side,
            ],
            outputs=[overlays, scores, curves, downloads],
            show_progress_on=overlays,
            concurrency_id="explain",
        )
        stop.click(handlers.stop, inputs=None, outputs=None, cancels=[explaining], queue=False)
        page.unload(handlers.end_session)
    return page
