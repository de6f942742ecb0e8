"""Guided backpropagation (Springenberg et al., ICLR-W 2015, https://arxiv.org/abs/1412.6806)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.utils.find_layers import (
    replace_all_layer_type_recursive as replace_all_layer_type_recursive,  # re-exported
)
from pytorch_grad_cam.utils.model_outputs import OutputSelector, select_output
from pytorch_grad_cam.utils.model_state import model_in_eval_mode
from pytorch_grad_cam.utils.validation import is_integer


class _GuidedReLUGate(torch.autograd.Function):
    """Identity forward on a ReLU's output; backward lets only positive gradients through.

    Placed after a ReLU, whose own backward keeps positions with a positive input, the
    total backward is ``grad * (x > 0) * (grad > 0)``: guided backpropagation.
    """

    @staticmethod
    def forward(ctx: Any, relu_output: torch.Tensor) -> torch.Tensor:
        return relu_output.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        return grad_output.clamp(min=0)


#: Activation modules whose backward gets the guided gate.
RECTIFIERS = (nn.ReLU, nn.ReLU6)


def _guide(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return _GuidedReLUGate.apply(output)


class GuidedBackpropReLU(torch.autograd.Function):
    """A ReLU whose backward is guided: ``grad * (x > 0) * (grad > 0)`` (grad-cam 1.5.7's
    function; ``GuidedBackpropReLUModel`` guides the model's own ReLUs instead)."""

    @staticmethod
    def forward(self: Any, input_img: torch.Tensor) -> torch.Tensor:  # noqa: PLW0211
        """``max(x, 0)``, keeping ``x`` for the backward pass."""
        self.save_for_backward(input_img)
        return input_img.clamp(min=0)

    @staticmethod
    def backward(self: Any, grad_output: torch.Tensor) -> torch.Tensor:  # noqa: PLW0211
        """The gradient where both the input and the gradient are positive, else 0."""
        (input_img,) = self.saved_tensors
        return grad_output * (input_img > 0) * (grad_output > 0)


class GuidedBackpropReLUasModule(nn.Module):
    """:class:`GuidedBackpropReLU` as a module, to stand in for ``nn.ReLU``."""

    def forward(self, input_img: torch.Tensor) -> torch.Tensor:
        """``max(x, 0)`` with the guided backward."""
        return GuidedBackpropReLU.apply(input_img)


class GuidedBackpropReLUModel:
    """Guided-backpropagation gradients of a class score with respect to the input image.

    Every ``nn.ReLU`` / ``nn.ReLU6`` module of the model gets a temporary forward hook for
    the call (functional ``F.relu`` calls are not guided); the model
    itself (modules, in-place flags, train/eval mode, parameter ``.grad``) is not changed,
    also when the call raises.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device | None = None,
        output_selector: OutputSelector = None,
    ) -> None:
        self.model = model
        self.device = device
        self.output_selector = output_selector

    def __call__(
        self,
        input_img: torch.Tensor,
        target_category: None | int | Sequence[int] = None,
    ) -> np.ndarray:
        """Return ``H x W x C`` gradients for one image, ``B x H x W x C`` for a batch.

        ``target_category``: ``None`` (each image's top class), one int for every image,
        or one int per image.
        """
        if not isinstance(input_img, torch.Tensor) or input_img.ndim != 4:
            raise ValueError("input_img must be a B x C x H x W tensor.")
        device = self.device or next(self.model.parameters(), input_img).device
        image = input_img.detach().to(device).clone().requires_grad_(True)
        relus = [module for module in self.model.modules() if isinstance(module, RECTIFIERS)]
        handles = []
        # The hooks go on inside the model's lock: another thread's call waits for this one.
        with model_in_eval_mode(self.model), torch.enable_grad():
            try:
                handles = [relu.register_forward_hook(_guide) for relu in relus]
                # A copy goes in, so an in-place first operation does not touch the leaf.
                scores = select_output(self.model(image.clone()), self.output_selector)
                category = _category_index(target_category, scores)
                score = scores.gather(1, category).sum()
                (gradient,) = torch.autograd.grad(score, image)
            finally:
                for handle in handles:
                    handle.remove()
        result = gradient.permute(0, 2, 3, 1).float().cpu().numpy()
        return result[0] if result.shape[0] == 1 else result

    def forward(self, input_img: torch.Tensor) -> Any:
        """The model's output for ``input_img`` (no guidance)."""
        return self.model(input_img)

    def recursive_replace_relu_with_guidedrelu(self, module_top: nn.Module) -> None:
        """Replace every ``nn.ReLU`` inside ``module_top`` by a ``GuidedBackpropReLUasModule``
        (this changes ``module_top``; ``__call__`` does not need it)."""
        replace_all_layer_type_recursive(module_top, nn.ReLU, GuidedBackpropReLUasModule())

    def recursive_replace_guidedrelu_with_relu(self, module_top: nn.Module) -> None:
        """Undo :meth:`recursive_replace_relu_with_guidedrelu`: back to ``nn.ReLU``."""
        replace_all_layer_type_recursive(module_top, GuidedBackpropReLUasModule, nn.ReLU())


def _category_index(target_category: Any, scores: torch.Tensor) -> torch.Tensor:
    batch = scores.shape[0]
    if target_category is None:
        return scores.detach().argmax(dim=1, keepdim=True)
    if is_integer(target_category):
        target_category = [target_category] * batch
    categories = [int(category) for category in target_category]
    if len(categories) != batch:
        raise ValueError(
            f"target_category has {len(categories)} entries but the batch has {batch} images; "
            "pass one category per image, or a single int for all."
        )
    return torch.tensor(categories, device=scores.device).view(batch, 1)
