"""What the page's buttons and menus do: each handler reads the page, asks the service,
and returns the page's new values. Errors become a message on the page (``gr.Error``),
never a stack trace; unexpected ones are logged in full on the server."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr

from pytorch_grad_cam.app.errors import AppInputError, Cancelled
from pytorch_grad_cam.app.images import LoadedImage, load_image
from pytorch_grad_cam.app.models import DEFAULT_KEY, LoadedModel, ModelStore
from pytorch_grad_cam.app.outputs import scores_markdown, write_run_files
from pytorch_grad_cam.app.plots import deletion_figure
from pytorch_grad_cam.app.service import ExplainRequest, ExplanationService, Prediction
from pytorch_grad_cam.app.sessions import SessionFiles
from pytorch_grad_cam.utils.package_data import EXAMPLE_IMAGE

LOGGER = logging.getLogger("pytorch_grad_cam.app")
Handler = TypeVar("Handler", bound=Callable[..., Any])


def shown_on_page(handler: Handler) -> Handler:
    """``handler`` with its errors as messages on the page: an ``AppInputError`` as it
    is, a Stop as "Stopped", anything else as one line (and the traceback in the log)."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except AppInputError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except Cancelled:
            raise gr.Error("Stopped.", title="Stopped", print_exception=False) from None
        except Exception as error:  # noqa: BLE001 - the page gets one line, the log the rest
            LOGGER.exception("unexpected error in %s", handler.__name__)
            raise gr.Error(
                f"Something went wrong: {type(error).__name__}: {error}. The details are in "
                "the server's log.",
                print_exception=False,
            ) from None

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class ModelSelection:
    """The model a session has chosen: its key and, if uploaded, a weights file."""

    key: str = DEFAULT_KEY
    weights_file: str | None = None


def class_label(index: int, name: str) -> str:
    """How a class is written on the page: ``282: tiger cat``."""
    return f"{index}: {name}"


def class_index(label: str) -> int:
    """The index of a class written as ``class_label`` writes it."""
    return int(label.split(":", 1)[0])


class PageHandlers:
    """The handlers of one app (shared by every session).

    Args:
        service: computes predictions, maps and scores.
        store: the loaded models.
        sessions: the sessions' folders and Stop flags.
    """

    def __init__(
        self, service: ExplanationService, store: ModelStore, sessions: SessionFiles
    ) -> None:
        self.service = service
        self.store = store
        self.sessions = sessions

    # ------------------------------------------------------------ image and model
    @shown_on_page
    def start(self, input_side: int) -> tuple[Any, ...]:
        """The page as it opens: the example image, the default model, its prediction."""
        image = load_image(EXAMPLE_IMAGE)
        loaded = self.store.get(DEFAULT_KEY)
        prediction = self.service.predict(loaded, image, input_side)
        return (
            image,
            image_preview(image),
            ModelSelection(),
            *layer_menu(loaded),
            *prediction_values(prediction),
            notes(loaded, image),
        )

    @shown_on_page
    def upload_image(
        self,
        path: str | None,
        selection: ModelSelection,
        input_side: int,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        """A new image: read it (or refuse it), show it, and predict its classes."""
        if not path:
            return (gr.skip(),) * 5
        self.sessions.remember_upload(session_of(request), path)
        image = load_image(path, Path(path).name)
        if image.note:
            gr.Warning(image.note)
        return self.with_prediction(image, selection, input_side)

    @shown_on_page
    def use_example(self, selection: ModelSelection, input_side: int) -> tuple[Any, ...]:
        """The shipped example image instead of an upload."""
        return self.with_prediction(load_image(EXAMPLE_IMAGE), selection, input_side)

    def with_prediction(
        self, image: LoadedImage, selection: ModelSelection, input_side: int
    ) -> tuple[Any, ...]:
        """The image's state, preview, top classes, class menu and notes."""
        loaded = self.store.get(selection.key, selection.weights_file)
        prediction = self.service.predict(loaded, image, input_side)
        return (image, image_preview(image), *prediction_values(prediction), notes(loaded, image))

    @shown_on_page
    def change_model(
        self,
        key: str,
        weights_file: str | None,
        image: LoadedImage | None,
        input_side: int,
        request: gr.Request,
    ) -> tuple[Any, ...]:
        """Another model (or weights file): load it, offer its layers, predict again."""
        if weights_file:
            self.sessions.remember_upload(session_of(request), weights_file)
        selection = ModelSelection(key or DEFAULT_KEY, weights_file or None)
        loaded = self.store.get(selection.key, selection.weights_file)
        image = required(image)
        prediction = self.service.predict(loaded, image, input_side)
        return (
            selection,
            *layer_menu(loaded),
            *prediction_values(prediction),
            notes(loaded, image),
        )

    @shown_on_page
    def change_input_side(
        self, image: LoadedImage | None, selection: ModelSelection, input_side: int
    ) -> Any:
        """Another input size: predict again (the top classes depend on it); the class
        chosen to explain stays."""
        loaded = self.store.get(selection.key, selection.weights_file)
        top_classes, _ = prediction_values(
            self.service.predict(loaded, required(image), input_side)
        )
        return top_classes

    def pick_top_class(self, event: gr.SelectData) -> Any:
        """A click on one of the top classes selects it in the class menu."""
        return gr.update(value=class_index(str(event.value)))

    # ------------------------------------------------------------ explaining
    @shown_on_page
    def explain(
        self,
        image: LoadedImage | None,
        selection: ModelSelection,
        layer: str,
        category: int | None,
        methods: list[str],
        with_scores: bool,
        input_side: int,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(track_tqdm=True),  # noqa: B008 - Gradio's way
    ) -> tuple[Any, ...]:
        """The overlays of every chosen method, their downloads and, if asked, scores."""
        if category is None:
            raise AppInputError("Class: choose a class to explain, e.g. one of the top five")
        session = session_of(request)
        stop = self.sessions.stop_flag(session)
        stop.clear()
        loaded = self.store.get(selection.key, selection.weights_file)
        explain_request = ExplainRequest(
            methods=list(methods or []),
            layer=layer,
            category=int(category),
            input_side=int(input_side),
            with_scores=bool(with_scores),
        )
        results = self.service.explain(
            loaded,
            required(image),
            explain_request,
            cancel=stop,
            progress=lambda fraction, text: progress(fraction, desc=text),
        )
        files = write_run_files(results, self.sessions.run_folder(session))
        overlays = [(str(path), result.method) for path, result in zip(files, results)]
        return overlays, scores_markdown(results), deletion_figure(results), [str(f) for f in files]

    def stop(self, request: gr.Request) -> None:
        """Stop the session's running explanation at its next forward pass."""
        self.sessions.stop_flag(session_of(request)).set()

    def end_session(self, request: gr.Request) -> None:
        """The tab was closed: delete the session's uploads and outputs."""
        deleted = self.sessions.end(session_of(request))
        LOGGER.info("session ended: deleted %d file(s) and folder(s)", len(deleted))


def required(image: LoadedImage | None) -> LoadedImage:
    """``image``, or an ``AppInputError`` when there is none yet."""
    if image is None:
        raise AppInputError("Image: upload an image, or use the example image")
    return image


def session_of(request: gr.Request | None) -> str:
    """The session's id (one per open tab)."""
    return getattr(request, "session_hash", None) or "anonymous"


def image_preview(image: LoadedImage) -> Any:
    """The image as the page shows it (uint8 RGB)."""
    return (image.rgb * 255).round().astype("uint8")


def layer_menu(loaded: LoadedModel) -> tuple[Any]:
    """The target-layer menu for ``loaded``: every named layer, the usual one chosen."""
    suggested = loaded.suggested_layers[0] if loaded.suggested_layers else None
    info = f"suggested: {suggested}; any named layer of the model" if suggested else None
    return (gr.update(choices=loaded.layer_names, value=suggested, info=info),)


def prediction_values(prediction: Prediction) -> tuple[Any, Any]:
    """The top classes (with probabilities) and the class menu, top class chosen."""
    top = {class_label(index, name): probability for index, name, probability in prediction.top}
    choices = [
        (class_label(index, name), index) for index, name in enumerate(prediction.class_names)
    ]
    return top, gr.update(choices=choices, value=prediction.top[0][0])


def notes(loaded: LoadedModel, image: LoadedImage) -> str:
    """What the page is showing, in a line or two."""
    height, width = image.rgb.shape[:2]
    lines = [
        f"**Model:** {loaded.description}, on {loaded.device}.",
        f"**Image:** {image.name}, {width} x {height} pixels.",
    ]
    size = loaded.explainable.input_size
    if size is not None:
        lines.append(f"This model takes {size[1]} x {size[0]} pixels; the input size is fixed.")
    if image.note:
        lines.append(image.note)
    return "  \n".join(lines)
