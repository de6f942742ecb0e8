"""ShapleyCAM (Huaiguang Cai, 2025, "CAMs as Shapley Value-based Explainers")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.cam_call import CamCall, LayerContext
from pytorch_grad_cam.incumbent_hooks import CategoryNamedWeights
from pytorch_grad_cam.utils.maps import spatial_axes
from pytorch_grad_cam.utils.model_targets import ClassifierOutputReST, Target
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget as ClassifierOutputTarget,  # re-exported: the incumbent's path
)


class ShapleyCAM(CategoryNamedWeights, BaseCAM):
    """Grad-CAM with second-order weights: each channel's share of a Shapley value.

    A second-order Taylor expansion of the score ``y`` around the activations ``A``
    (with ``g = dy/dA`` and the Hessian ``H = d^2y/dA^2``), taken as a cooperative game
    whose players are the activations and whose baseline is ``A = 0``, gives each
    activation the Shapley value ``A_ij (g_ij - 1/2 (H A)_ij)``. The channel weights
    average its non-activation factor:

    ``w_k = mean_ij (g - 1/2 H A)^k_ij``;  ``map = ReLU(sum_k w_k A^k)``.

    ``H A`` is a Hessian-vector product: ``d(g . A)/dA - g`` with ``A`` held fixed in the
    product, computed by differentiating ``g`` (taken with ``create_graph=True``) with
    ``grad_outputs=A``. On a score that is linear in ``A`` (a logit after global average
    pooling and a linear head) ``H A = 0`` and ShapleyCAM equals GradCAM. The extra cost is
    one double-backward pass per target layer; the model's operations after the layer
    must support second derivatives (``scaled_dot_product_attention`` runs on its math
    kernel during the call for that reason).

    ``targets=None`` explains each image's top class with the paper's Residual Softmax
    Target-class score, :class:`~pytorch_grad_cam.utils.model_targets.ClassifierOutputReST`
    (``y_c + softmax(y)_c``), whose softmax term makes the Hessian non-zero; targets that
    are passed are used as given.
    """

    def layer_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """``mean_ij (g - 1/2 H A)``: ``gradients`` is ``g - 1/2 H A`` here (see
        :meth:`target_gradients`)."""
        assert gradients is not None  # a gradient method
        return gradients.mean(dim=spatial_axes(gradients), keepdim=True)

    def run_model(self, call: CamCall) -> Any:
        """The forward pass on the math attention kernel: the fused kernels (flash,
        memory-efficient) have no second derivative, the math one does."""
        with sdpa_kernel(SDPBackend.MATH):
            return call.run_model(call.input_tensor)

    def default_targets(self, output: Any) -> list[Target]:
        """Each image's top class as its ReST score (the paper's default target)."""
        top = super().default_targets(output)
        return [ClassifierOutputReST(target.category) for target in top]  # type: ignore[attr-defined]

    def target_gradients(
        self, scores: torch.Tensor, layer_outputs: list[Any], call: CamCall
    ) -> list[Any]:
        """``g - 1/2 H A`` in place of each layer's gradient ``g``."""
        return shapley_gradients(scores, layer_outputs)


def shapley_gradients(
    scores: torch.Tensor, activations: Sequence[torch.Tensor]
) -> list[torch.Tensor | None]:
    """``g - 1/2 H A`` for every layer's activations ``A``, detached, where ``g`` is the
    gradient of the summed scores (images are independent) and ``H`` their Hessian with
    respect to ``A``; zeros where the scores do not depend on ``A``."""
    with torch.enable_grad():
        score = scores.sum()
        if not score.requires_grad:
            return [torch.zeros_like(a) for a in activations]
        gradients = torch.autograd.grad(score, activations, create_graph=True, allow_unused=True)
        result: list[torch.Tensor | None] = []
        for index, (activation, gradient) in enumerate(zip(activations, gradients)):
            if gradient is None:
                result.append(torch.zeros_like(activation))
                continue
            product = _hessian_vector_product(index, gradient, activation)
            result.append((gradient - 0.5 * product).detach())
        return result


def _hessian_vector_product(
    index: int, gradient: torch.Tensor, activation: torch.Tensor
) -> torch.Tensor:
    """``H A``: ``gradient`` (of the score, with its graph) differentiated along ``A``."""
    if not gradient.requires_grad:  # the score is linear in the activations
        return torch.zeros_like(activation)
    try:
        (product,) = torch.autograd.grad(
            gradient,
            activation,
            grad_outputs=activation.detach(),
            retain_graph=True,
            allow_unused=True,
        )
    except RuntimeError as error:
        raise RuntimeError(
            f"ShapleyCAM needs second derivatives of the score with respect to "
            f"target_layers[{index}], and an operation of the model after that layer does not "
            f"provide them ({error}). Pick another layer, or use GradCAM."
        ) from error
    return torch.zeros_like(activation) if product is None else product
