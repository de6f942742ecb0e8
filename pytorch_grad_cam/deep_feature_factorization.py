"""Deep Feature Factorization (Collins, Achanta & Süsstrunk, ECCV 2018,
https://arxiv.org/abs/1806.10206)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import LayerRecorder, check_reached
from pytorch_grad_cam.layer_layout import LayerLayout
from pytorch_grad_cam.utils.maps import resize_maps, scale_to_unit_range
from pytorch_grad_cam.utils.model_outputs import OutputSelector
from pytorch_grad_cam.utils.model_state import detached_output, model_in_eval_mode
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform
from pytorch_grad_cam.utils.validation import check_cam_input as check_input
from pytorch_grad_cam.utils.validation import check_positive_int, check_target_layers


def non_negative_factorization(
    matrix: torch.Tensor | np.ndarray,
    n_components: int,
    iterations: int = 200,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``V ~ W H`` with ``W`` (``n x k``) and ``H`` (``k x m``) non-negative.

    scikit-learn's ``NMF`` (coordinate descent on ``||V - W H||_F``, started from NNDSVDa,
    or at random with ``seed`` when ``k`` exceeds ``min(n, m)``), run for at most
    ``iterations`` iterations on the CPU. Returns float32 tensors on ``matrix``'s device.
    """
    from sklearn.decomposition import NMF  # noqa: PLC0415 (scikit-learn loads slowly)

    check_positive_int(n_components, "n_components", "e.g. n_components=8")
    check_positive_int(iterations, "iterations", "e.g. iterations=200")
    device = matrix.device if isinstance(matrix, torch.Tensor) else torch.device("cpu")
    values = (
        matrix.detach().double().cpu().numpy()
        if isinstance(matrix, torch.Tensor)
        else np.asarray(matrix, dtype=np.float64)
    )
    if values.ndim != 2:
        raise ValueError(f"matrix must be 2-D (n x m), got shape {tuple(values.shape)}.")
    model = NMF(n_components=n_components, max_iter=iterations, random_state=int(seed))
    w = model.fit_transform(values)
    h = model.components_
    return (
        torch.as_tensor(w, dtype=torch.float32, device=device),
        torch.as_tensor(h, dtype=torch.float32, device=device),
    )


class DeepFeatureFactorization:
    """Concepts found by non-negative matrix factorisation of a layer's activations.

    The target layer's activations of the whole batch (``B x C x *spatial``, reshaped by
    ``reshape_transform`` if given) form one matrix ``A`` of ``B * positions`` rows and
    ``C`` columns, shifted to be non-negative (``A - min(min A, 0)``), and are factorised
    (:func:`non_negative_factorization`, scikit-learn's NMF) as ``A ~ W H``: the
    ``k = n_components`` columns of ``W`` are the concepts' heat maps (one value per
    position of every image), the rows of ``H`` the concepts' embeddings in channel space.
    Concepts are shared by the images of a batch, as in the paper's co-segmentation; a
    batch of one image factorises that image alone.

    Args:
        target_layer: the layer whose activations are factorised (a module, or a list of
            one module).
        computation_on_concepts: optional callable applied to the ``k x C`` embeddings
            ``H`` (e.g. the classifier head ``model.fc`` of a GAP + linear model) to name
            the concepts by class scores.
        iterations: the NMF solver's maximum number of iterations.
        seed: the seed of the factorisation's random start.

    ``reshape_transform`` is that of :class:`~pytorch_grad_cam.base_cam.BaseCAM`. It is
    not a layer CAM (it returns concepts, not one map per image), so it does not
    subclass ``BaseCAM``; ``outputs`` holds the model's output of the last call.
    """

    def __init__(
        self,
        model: nn.Module,
        target_layer: nn.Module | Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        computation_on_concepts: Callable[[torch.Tensor], Any] | None = None,
        *,
        iterations: int = 200,
        seed: int = 0,
        output_selector: OutputSelector = None,
        target_layers: Sequence[nn.Module] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        layer = _one_layer(target_layer, target_layers)
        self.model = model
        self.target_layers = check_target_layers(model, [layer])
        self.reshape_transform = reshape_transform
        self.output_selector = output_selector
        self.outputs: Any = None
        self._announced_layers: set[int] = set()
        if computation_on_concepts is not None and not callable(computation_on_concepts):
            raise TypeError(
                "computation_on_concepts must be a callable taking the k x C concept "
                f"embeddings (e.g. model.fc), got {type(computation_on_concepts).__name__}."
            )
        self.computation_on_concepts = computation_on_concepts
        self.iterations = check_positive_int(iterations, "iterations", "e.g. iterations=200")
        self.seed = seed

    def __call__(
        self, input_tensor: torch.Tensor, n_components: int = 16
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Factorise the target layer's activations of ``input_tensor`` into concepts.

        Returns:
            ``concepts``: float32 ``C x k``, the concept embeddings (``H^T``).
            ``batch_explanations``: float32 ``B x k x H x W`` (``x D`` more for volumes),
            each concept's heat map in each image, upsampled to the input's size and
            min-max scaled to [0, 1] per image and concept.
            ``concept_outputs``: ``computation_on_concepts(H)`` as a numpy array (for a
            classifier head, ``k x classes``: row ``i`` scores concept ``i``), or ``None``
            without ``computation_on_concepts``.
        """
        n_components = check_positive_int(
            n_components, "n_components", "e.g. dff(input_tensor, n_components=8)"
        )
        input_tensor = check_input(input_tensor, self.model)
        size = input_tensor.shape[2:]
        layout = LayerLayout(
            self.model, self.target_layers, self.reshape_transform, self._announced_layers
        )
        with model_in_eval_mode(self.model):
            recording = LayerRecorder(self.target_layers, track_gradients=False)
            with recording as recorder, torch.no_grad():
                self.outputs = detached_output(self.model(input_tensor))
            (layer_output,) = check_reached(recorder.outputs, self.target_layers)
            transform = layout.transform(0, layer_output, size)
            activations = layout.reshape(0, layer_output, transform, len(size))
            batch, channels = activations.shape[:2]
            spatial = activations.shape[2:]
            matrix = activations.movedim(1, -1).reshape(-1, channels)
            matrix = matrix - matrix.min().clamp(max=0)
            heat, embeddings = non_negative_factorization(
                matrix, n_components, self.iterations, self.seed
            )
            heat = heat.view(batch, *spatial, n_components).movedim(-1, 1)
            heat = resize_maps(heat.reshape(batch * n_components, *spatial), size)
            explanations = scale_to_unit_range(heat).view(batch, n_components, *size)
            concept_outputs = None
            if self.computation_on_concepts is not None:
                with torch.no_grad():
                    concept_outputs = _to_numpy(self.computation_on_concepts(embeddings))
        return _to_numpy(embeddings.T), _to_numpy(explanations), concept_outputs

    def close(self) -> None:
        """Release the last output; no hook outlives a call."""
        self.outputs = None

    def __enter__(self) -> DeepFeatureFactorization:
        """The object itself; leaving the block releases ``outputs``."""
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, exc_tb: Any) -> None:
        """Release; never swallow an exception."""
        self.close()  # returns None: an exception is never swallowed


def _one_layer(target_layer: Any, target_layers: Any) -> Any:
    if target_layer is not None and target_layers is not None:
        raise TypeError("Pass target_layer=module or target_layers=[module], not both.")
    layer = target_layer if target_layer is not None else target_layers
    if isinstance(layer, (list, tuple)):
        if len(layer) != 1:
            raise ValueError(
                f"DeepFeatureFactorization factorises one layer; got {len(layer)} layers. "
                "Pass target_layer=module."
            )
        layer = layer[0]
    if layer is None:
        raise TypeError("target_layer is required: the module whose activations to factorise.")
    return layer


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy()
    return np.asarray(value)
