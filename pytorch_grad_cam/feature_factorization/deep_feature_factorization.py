"""Deep Feature Factorization at grad-cam 1.5.7's path, with its two helper functions.

The class is :class:`pytorch_grad_cam.deep_feature_factorization.DeepFeatureFactorization`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.deep_feature_factorization import (
    DeepFeatureFactorization,
    non_negative_factorization,
)
from pytorch_grad_cam.utils.image import (
    create_labels_legend,
    scale_cam_image,
    show_factorization_on_image,
)
from pytorch_grad_cam.utils.maps import resize_maps, scale_to_unit_range
from pytorch_grad_cam.utils.package_data import imagenet_categories

__all__ = [
    "ActivationsAndGradients",
    "DeepFeatureFactorization",
    "create_labels_legend",
    "dff",
    "run_dff_on_image",
    "scale_cam_image",
    "show_factorization_on_image",
]


def dff(activations: np.ndarray, n_components: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Factorise a batch of activations (``B x C x *spatial`` numpy) into concepts.

    The activations of the whole batch form one matrix of ``B * positions`` rows and
    ``C`` columns, shifted to be non-negative, factorised by NMF as ``W H`` (see
    :class:`DeepFeatureFactorization`). Returns the concepts' embeddings ``C x k`` (``H^T``)
    and their heat maps ``B x k x *spatial`` (``W``, at the activations' resolution, not
    scaled).
    """
    array = np.asarray(activations, dtype=np.float32)
    array = np.where(np.isnan(array), 0, array)
    batch, channels = array.shape[:2]
    spatial = array.shape[2:]
    matrix = np.moveaxis(array, 1, -1).reshape(-1, channels)
    matrix = matrix - min(float(matrix.min()), 0.0)
    w, h = non_negative_factorization(torch.from_numpy(matrix), n_components)
    heat = w.numpy().reshape(batch, *spatial, n_components)
    return h.numpy().T, np.moveaxis(heat, -1, 1)


def run_dff_on_image(
    model: nn.Module,
    target_layer: nn.Module,
    classifier: nn.Module,
    img_pil: Any,
    img_tensor: torch.Tensor,
    reshape_transform: Any = None,
    n_components: int = 5,
    top_k: int = 2,
) -> np.ndarray:
    """The image beside its concepts: ``n_components`` concepts of ``target_layer``, each
    pixel coloured by its dominant concept, a legend naming each concept by the
    ``top_k`` classes ``classifier`` gives its embedding (softmax probabilities).

    Args:
        model: the model; its class names come from ``model.config.id2label`` (Hugging
            Face) or are the ImageNet names when it has 1000 classes, else the indices.
        target_layer: the layer to factorise.
        classifier: applied to the ``k x C`` concept embeddings (e.g. ``model.fc``).
        img_pil: the image (a PIL image or an ``H x W x 3`` uint8 array).
        img_tensor: the image as the model takes it, ``C x H x W`` or ``1 x C x H x W``.
        reshape_transform: see :class:`DeepFeatureFactorization`.
        n_components: how many concepts.
        top_k: how many classes name each concept in the legend.

    Returns:
        uint8 ``H x (2 W + legend) x 3``: the image, then the concepts with the legend.
    """
    image = np.asarray(img_pil.convert("RGB") if hasattr(img_pil, "convert") else img_pil)
    batch = img_tensor[None] if img_tensor.ndim == 3 else img_tensor
    factorization = DeepFeatureFactorization(
        model, target_layer, reshape_transform, computation_on_concepts=classifier
    )
    _, explanations, concept_outputs = factorization(batch, n_components)
    probabilities = torch.softmax(torch.as_tensor(concept_outputs), dim=-1).numpy()
    legend = create_labels_legend(probabilities, _class_names(model, probabilities.shape[1]), top_k)
    heat = torch.as_tensor(explanations[0])
    if tuple(heat.shape[1:]) != image.shape[:2]:
        heat = scale_to_unit_range(resize_maps(heat, image.shape[:2]))
    visualization = show_factorization_on_image(
        image.astype(np.float32) / 255, heat.numpy(), image_weight=0.3, concept_labels=legend
    )
    return np.hstack([image.astype(np.uint8), visualization])


def _class_names(model: nn.Module, classes: int) -> dict[int, str]:
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if isinstance(id2label, dict) and len(id2label) >= classes:
        return {int(key): str(value) for key, value in id2label.items()}
    if classes == 1000:
        return dict(enumerate(imagenet_categories()))
    return {index: str(index) for index in range(classes)}
