"""grad-cam 1.5.7's module path for FullGrad (defined in :mod:`pytorch_grad_cam.fullgrad`)."""

from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.fullgrad import FullGrad
from pytorch_grad_cam.utils.find_layers import find_layer_predicate_recursive
from pytorch_grad_cam.utils.image import scale_accross_batch_and_channels, scale_cam_image
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

__all__ = [
    "BaseCAM",
    "FullGrad",
    "find_layer_predicate_recursive",
    "get_2d_projection",
    "scale_accross_batch_and_channels",
    "scale_cam_image",
]
