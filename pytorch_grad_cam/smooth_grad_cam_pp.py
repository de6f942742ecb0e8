"""Smooth Grad-CAM++ (Omeiza et al., 2019, https://arxiv.org/abs/1908.01224)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from pytorch_grad_cam.activations_and_gradients import LayerRecorder, check_reached
from pytorch_grad_cam.cam_call import CamCall, CamOptions, LayerContext
from pytorch_grad_cam.grad_cam_plusplus import GradCAMPlusPlus
from pytorch_grad_cam.perturbation_cam import check_batch_size
from pytorch_grad_cam.utils.maps import spatial_axes
from pytorch_grad_cam.utils.model_targets import Target
from pytorch_grad_cam.utils.reshape_transforms import ReshapeTransform
from pytorch_grad_cam.utils.scoring import layer_gradients
from pytorch_grad_cam.utils.validation import check_positive_int

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: A ``torch.Generator`` (its stream continues from call to call), an int seed (every call
#: draws the same noise), or ``None`` (torch's global generator).
NoiseSource = Union[torch.Generator, int, None]
#: Where a pass keeps the noisy passes' moments in ``call.method_state``.
MOMENTS = "smooth_grad_cam_pp.moments"


class SmoothGradCAMpp(GradCAMPlusPlus):
    """Grad-CAM++ with its gradient powers averaged over noisy copies of the input.

    For image ``X`` (values in ``[min X, max X]``), ``n = n_samples`` noisy copies
    ``X_s = X + eps_s``, ``eps_s ~ N(0, sigma^2)``, ``sigma = stdev_spread * (max X - min X)``;
    ``g_s = dy(X_s)/dA^k(X_s)`` at the target layer, and

    ``D1 = mean_s g_s``, ``D2 = mean_s g_s^2``, ``D3 = mean_s g_s^3`` (element-wise);
    ``alpha_ij = D2_ij / (2 D2_ij + sum_ab A_ab D3_ij)`` (0 where the denominator is 0);
    ``w_k = sum_ij alpha_ij ReLU(D1_ij)``;  ``map = ReLU(sum_k w_k A^k)``,

    with ``A`` the activations of the clean input. With ``stdev_spread=0`` this is
    :class:`~pytorch_grad_cam.grad_cam_plusplus.GradCAMPlusPlus`.

    Args:
        n_samples: noisy copies per image.
        stdev_spread: the noise's standard deviation as a fraction of each image's value
            range.
        batch_size: noisy copies per forward/backward pass, built in one reused buffer:
            memory grows with it, not with ``n_samples``.
        generator: where the noise comes from: a ``torch.Generator``, an int seed (each
            call then draws the same noise) or ``None`` (torch's global generator). Copy
            ``s`` of image ``b`` is ``X_b + sigma_b * randn(X_b.shape)``, the
            ``(b * n_samples + s)``-th image-shaped draw, whatever the ``batch_size``.
        progress_bar: a ``tqdm`` bar over the noisy batches.

    The other arguments are those of :class:`~pytorch_grad_cam.base_cam.BaseCAM`.
    """

    supports_extra_inputs = False  # its noisy passes call the model directly

    supports_create_graph = False  # its gradients come from its own noisy passes

    def __init__(
        self,
        model: nn.Module,
        target_layers: Sequence[nn.Module] | None = None,
        reshape_transform: ReshapeTransform | None = None,
        n_samples: int = 25,
        stdev_spread: float = 0.15,
        batch_size: int = 32,
        *,
        generator: NoiseSource = None,
        progress_bar: bool = False,
        **options: Unpack[CamOptions],
    ) -> None:
        super().__init__(
            model,
            target_layers,
            reshape_transform,
            **options,
        )
        self.n_samples = check_n_samples(n_samples)
        self.stdev_spread = check_stdev_spread(stdev_spread)
        self.batch_size = check_batch_size(batch_size)
        self.generator = check_generator(generator)
        self.progress_bar = progress_bar

    def layer_weights(
        self, activations: torch.Tensor, gradients: torch.Tensor | None, context: LayerContext
    ) -> torch.Tensor:
        """Grad-CAM++'s weights with the gradient powers averaged over the noisy copies
        (their moments are computed once per pass, for every layer, and kept in the call)."""
        assert context.call is not None  # a layer's weights come from a call
        moments = context.call.method_state.get(MOMENTS)
        if moments is None:
            moments = self._noisy_moments(context.call, context.targets)
            context.call.method_state[MOMENTS] = moments
        mean, mean_squared, mean_cubed = moments[context.layer_index]
        axes = spatial_axes(activations)
        activation_sum = activations.sum(dim=axes, keepdim=True)
        denominator = 2 * mean_squared + activation_sum * mean_cubed
        nonzero = denominator != 0
        safe = torch.where(nonzero, denominator, torch.ones_like(denominator))
        alpha = torch.where(nonzero, mean_squared / safe, torch.zeros_like(safe))
        return (alpha * torch.relu(mean)).sum(dim=axes, keepdim=True)

    def _noisy_moments(
        self, call: CamCall, targets: Sequence[Target] | None
    ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per target layer: the mean over the noisy copies of ``g``, ``g^2``, ``g^3``."""
        assert targets is not None  # uses_targets: resolved before the weights
        input_tensor = call.input_tensor
        n_samples = check_n_samples(self.n_samples)
        stdev_spread = check_stdev_spread(self.stdev_spread)
        batch_size = check_batch_size(self.batch_size)
        images = input_tensor.shape[0]
        size = input_tensor.shape[2:]
        total = images * n_samples
        sigma = stdev_spread * value_range(input_tensor)
        draw = noise_drawer(self.generator, input_tensor)
        layout = self.layer_layout
        transforms: list[Any] = []
        moments: list[list[torch.Tensor]] | None = None
        buffer = input_tensor.new_empty((min(batch_size, total), *input_tensor.shape[1:]))
        starts = range(0, total, buffer.shape[0])
        bar = tqdm(starts, desc=type(self).__name__, unit="batch", disable=not self.progress_bar)
        for start in bar:
            rows = range(start, min(start + buffer.shape[0], total))
            image_of_row = [row // n_samples for row in rows]
            noisy = buffer[: len(rows)]
            for slot, image in enumerate(image_of_row):
                draw(out=noisy[slot]).mul_(sigma[image]).add_(input_tensor[image])
            gradients = self._gradients_at_layers(noisy, [targets[i] for i in image_of_row])
            if not transforms:  # a gradient has its layer output's layout
                transforms = [layout.transform(i, g, size) for i, g in enumerate(gradients)]
            gradients = [
                layout.reshape(i, g, transforms[i], input_tensor.ndim - 2)
                for i, g in enumerate(gradients)
            ]
            if moments is None:  # per layer: sums of g, g^2, g^3 for each image
                moments = [
                    [g.new_zeros((images, *g.shape[1:])) for _ in range(3)] for g in gradients
                ]
            index = torch.arange(start, rows.stop, device=input_tensor.device) // n_samples
            for sums, g in zip(moments, gradients):
                index = index.to(g.device)
                for power, accumulator in enumerate(sums, start=1):
                    accumulator.index_add_(0, index, g if power == 1 else g.pow(power))
        assert moments is not None
        return [tuple(m / n_samples for m in sums) for sums in moments]  # type: ignore[misc]

    def _gradients_at_layers(
        self, batch: torch.Tensor, targets: list[Target]
    ) -> list[torch.Tensor]:
        """d(sum of the rows' scores)/d(each target layer's output) for a batch of inputs."""
        # No autograd until the recorder turns it on at the first target layer.
        recording = LayerRecorder(self.target_layers, track_gradients=True)
        with recording as recorder, torch.no_grad():
            scores = self._target_scores(self.model(batch), targets)
        return layer_gradients(scores, check_reached(recorder.outputs, self.target_layers))


# --------------------------------------------------------------------- shared with SS-CAM
def check_n_samples(n_samples: Any) -> int:
    """``n_samples`` as an int, or a ValueError that names it."""
    return check_positive_int(
        n_samples, "n_samples", "how many noisy or scaled copies are averaged"
    )


def check_stdev_spread(stdev_spread: Any) -> float:
    """``stdev_spread`` as a float >= 0, or a ValueError that names it."""
    if (
        isinstance(stdev_spread, bool)
        or not isinstance(stdev_spread, numbers.Real)
        or not 0 <= float(stdev_spread) < float("inf")
    ):
        raise ValueError(
            "stdev_spread must be a finite number >= 0 (the noise's standard deviation as a "
            f"fraction of the image's value range, e.g. 0.15), got {stdev_spread!r}."
        )
    return float(stdev_spread)


def check_generator(generator: Any) -> NoiseSource:
    """A ``torch.Generator``, an int seed or ``None``; a TypeError that names it otherwise."""
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        return int(generator)
    raise TypeError(
        "generator must be a torch.Generator, an int seed or None, got "
        f"{type(generator).__name__}; e.g. generator=torch.Generator().manual_seed(0) or "
        "generator=0."
    )


def value_range(images: torch.Tensor) -> torch.Tensor:
    """``max - min`` of each image of a batch, shape ``B`` (on the device, no sync)."""
    low, high = images.flatten(1).aminmax(dim=1)
    return high - low


def noise_drawer(source: NoiseSource, like: torch.Tensor) -> Callable[..., torch.Tensor]:
    """A function ``draw(out=tensor) -> out`` filling ``out`` with standard normal noise.

    Each call is one draw of ``out``'s shape from the generator, so a sequence of draws
    does not depend on how they are grouped. An int seed starts a new generator on
    ``like``'s device; a generator on another device draws there and the noise is copied.
    """
    generator = (
        torch.Generator(device=like.device).manual_seed(source)
        if isinstance(source, int)
        else source
    )

    def draw(out: torch.Tensor) -> torch.Tensor:
        if generator is None or generator.device == out.device:
            return out.normal_(generator=generator)
        noise = torch.randn(out.shape, generator=generator, device=generator.device)
        return out.copy_(noise)

    return draw
