"""Helpers: targets, image utilities, reshape transforms, layer look-up."""

from pytorch_grad_cam.utils.image import deprocess_image
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

__all__ = ["deprocess_image", "get_2d_projection"]
