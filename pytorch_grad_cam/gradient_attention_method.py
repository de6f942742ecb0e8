"""What the gradient-weighted attention methods share: one recorded pass, one target per
image, one relevance value per token, and maps at the input's size.

``TransformerAttribution`` and ``LeGrad`` subclass :class:`GradientAttentionMethod` and
supply :meth:`~GradientAttentionMethod.token_relevance`: from the recorded attentions
(with the autograd graph from the input) and the targets, a ``B x N`` relevance per token.
The rest is here: the checks, the model's lock and eval mode, the recorded pass
(``attention_capture``), the default targets, and the maps (``token_maps``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from pytorch_grad_cam.attention_capture import AttentionCapture, RecordedAttentions
from pytorch_grad_cam.token_maps import TokenMaps, check_gradient_input
from pytorch_grad_cam.utils.model_outputs import OutputSelector
from pytorch_grad_cam.utils.model_state import detached_output, model_in_eval_mode
from pytorch_grad_cam.utils.model_targets import Target
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform
from pytorch_grad_cam.utils.scoring import target_scores, top_class_targets
from pytorch_grad_cam.utils.validation import check_targets


class GradientAttentionMethod:
    """A map per image from a vision transformer's attention and the target's gradients.

    Args:
        model: a timm ViT / DeiT, a torchvision ``VisionTransformer``, a Hugging Face ViT
            or CLIP vision model (or a module wrapping one), or any transformer whose
            attention layers are given in ``attention_layers``. It is left as found: eval
            mode during a call with each module's flag restored, hooks only during a call,
            timm's ``fused_attn`` and Hugging Face's attention implementation switched for
            the call and restored, no parameter's ``.grad`` touched.
        attention_layers: ``None`` finds them (as ``AttentionRollout`` does), or a list of
            attention modules: timm or ``nn.MultiheadAttention`` ones, modules that return
            the ``B x heads x N x N`` probabilities or an ``(output, probabilities)`` tuple.
        reshape_transform: ``None`` lays the patch tokens out on the grid inferred from the
            token count and the input's size; or a transform taking the relevance as
            ``B x N x 1`` tokens to ``B x 1 x h x w``, such as
            ``functools.partial(vit_reshape_transform, height=14, width=14)``.
        num_prefix_tokens: tokens before the patches (class, distillation, register);
            default ``model.num_prefix_tokens`` when the model has it, else inferred.
        output_selector: which part of the model's output the targets score, when the
            default rule (a tensor, a ``.logits`` attribute, ...) does not fit.
    """

    #: The method's name, for messages.
    name: str = "GradientAttentionMethod"
    #: Whether the method reads the class token's row (then the model needs one).
    needs_class_token: bool = True

    def __init__(
        self,
        model: nn.Module,
        attention_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        *,
        num_prefix_tokens: int | None = None,
        output_selector: OutputSelector = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        self.model = model
        self.capture = AttentionCapture(model, attention_layers, self.name)
        self.attention_layers = self.capture.layers
        self.token_maps = TokenMaps(
            model, num_prefix_tokens, reshape_transform, self.name, self.needs_class_token
        )
        self.num_prefix_tokens = self.token_maps.num_prefix_tokens
        self.output_selector = output_selector
        self.outputs: Any = None

    # ----------------------------------------------------------------- extension points
    def token_relevance(
        self, recorded: RecordedAttentions, targets: Sequence[Target]
    ) -> torch.Tensor:
        """The ``B x N`` relevance of each token (columns in token order), from the
        recorded pass (its graph kept) and one target per image."""
        raise NotImplementedError(f"{type(self).__name__} must define token_relevance.")

    @property
    def blocks(self) -> list[nn.Module]:
        """Modules whose outputs the pass records as well (``LeGrad``: the blocks)."""
        return []

    def scores(self, output: Any, targets: Sequence[Target], selector: OutputSelector) -> Any:
        """Each image's target score (``B``, float32, with its graph) on ``output``."""
        with torch.enable_grad():
            return target_scores(output, targets, selector)

    # ----------------------------------------------------------------- the call
    def __call__(
        self,
        input_tensor: torch.Tensor,
        targets: Sequence[Target] | None = None,
        *,
        scale: bool = True,
        as_tensor: bool = False,
    ) -> np.ndarray | torch.Tensor:
        """One map per image of ``input_tensor`` (``B x C x H x W``).

        Args:
            input_tensor: the images as the model takes them.
            targets: one callable per image mapping that image's model output to the
                score to explain (``pytorch_grad_cam.utils.model_targets``), or ``None``
                for each image's top-scoring class.
            scale: scale each map to [0, 1] (default); ``False`` gives the raw relevance,
                resized to the input.
            as_tensor: return a tensor on the model's device instead of a numpy array.

        Returns:
            float32 maps of shape ``B x H x W``. ``self.outputs`` holds the model's output.
        """
        input_tensor = check_gradient_input(input_tensor, self.model, self.name)
        if targets is not None:
            targets = check_targets(targets, input_tensor.shape[0])
        with model_in_eval_mode(self.model):
            recorded = self.capture.record(input_tensor, with_gradients=True, blocks=self.blocks)
            if targets is None:
                targets = top_class_targets(recorded.output, self.output_selector)
            relevance = self.token_relevance(recorded, targets).detach()
        self.outputs = detached_output(recorded.output)
        del recorded  # the graph goes with it
        with torch.no_grad():
            maps = self.token_maps(relevance, input_tensor.shape, scale)
        return maps if as_tensor else maps.cpu().numpy()

    # ----------------------------------------------------------------- lifetime
    def close(self) -> None:
        """Release the last output. Hooks only exist during a call, so none remain."""
        self.outputs = None

    def __enter__(self) -> GradientAttentionMethod:
        """The method itself; leaving the block releases ``outputs``."""
        return self

    def __exit__(self, *exc_info: Any) -> None:
        """Release ``outputs``; never swallow the caller's exception."""
        self.close()
