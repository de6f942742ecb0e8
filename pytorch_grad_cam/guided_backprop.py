"""Guided backpropagation (Springenberg et al., ICLR-W 2015, https://arxiv.org/abs/1412.6806)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.base_cam import is_integer
from pytorch_grad_cam.utils.model_outputs import OutputSelector, select_output
from pytorch_grad_cam.utils.model_state import model_in_eval_mode


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
