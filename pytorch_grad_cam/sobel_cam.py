"""A model-free baseline "saliency map": the image's Sobel edge magnitude.

A map that any explanation should beat on the metrics: it only says where the image has
edges, not what the model looks at.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from pytorch_grad_cam.utils.maps import scale_to_unit_range


def sobel_cam(img: np.ndarray) -> np.ndarray:
    """The per-image min-max scaled Sobel gradient magnitude of ``img``'s grayscale.

    ``G = 0.299 R + 0.587 G + 0.114 B`` (OpenCV's ``COLOR_RGB2GRAY``, in float32);
    ``G_x``, ``G_y`` are its 3 x 3 Sobel derivatives (``cv2.Sobel``, borders reflected
    without repeating the edge pixel, ``BORDER_REFLECT_101``); the map is
    ``M = sqrt(G_x^2 + G_y^2)`` scaled to ``(M - min M) / (max M - min M)``, all zeros
    for a flat image. The scale of the input (uint8 0-255 or float 0-1) does not matter.

    Args:
        img: an ``H x W x 3`` RGB image (uint8 or float), or an ``H x W`` grayscale one.

    Returns:
        float32 ``H x W`` map in [0, 1].
    """
    image = np.asarray(img)
    if not (
        np.issubdtype(image.dtype, np.number) and not np.issubdtype(image.dtype, np.complexfloating)
    ):
        raise TypeError(f"img must be a numeric image array, got dtype {image.dtype}.")
    if image.ndim == 3 and image.shape[2] == 3:
        gray = cv2.cvtColor(image.astype(np.float32), cv2.COLOR_RGB2GRAY)
    elif image.ndim == 2:
        gray = image.astype(np.float32)
    else:
        raise ValueError(
            f"img must be an H x W x 3 RGB image (or H x W grayscale), got shape {image.shape}; "
            "convert RGBA with img[..., :3]."
        )
    if gray.size == 0 or not np.isfinite(gray).all():
        raise ValueError(f"img must hold finite pixel values, got shape {image.shape}.")
    gradient_x = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
    gradient_y = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = cv2.magnitude(gradient_x, gradient_y)
    return scale_to_unit_range(torch.from_numpy(magnitude).unsqueeze(0))[0].numpy()
