"""Metrics that judge a map by what the model does when the image is perturbed by it.

- ``cam_mult_image``: the image multiplied by its map (Grad-CAM++'s Average Drop and
  Increase in Confidence).
- ``road``: ROAD, pixels removed most / least relevant first and imputed (Rong et al. 2022).
- ``perturbation_curves``: RISE's deletion and insertion curves (Petsiuk et al. 2018).
- ``sanity_check``: the model-parameter randomisation test (Adebayo et al. 2018).

Each metric object is called as ``metric(input_tensor, grayscale_cams, targets, model)``
and returns one float32 value per image (a numpy array). The model runs in eval mode,
without autograd, on its own device, ``batch_size`` perturbed images at a time; its
train/eval flags are restored afterwards.
"""

from __future__ import annotations

from pytorch_grad_cam.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
)
from pytorch_grad_cam.metrics.perturbation_curves import (
    DeletionCurve,
    InsertionCurve,
    PerturbationCurve,
)
from pytorch_grad_cam.metrics.road import (
    ROADCombined,
    ROADLeastRelevantFirst,
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirst,
    ROADMostRelevantFirstAverage,
    noisy_linear_impute,
)
from pytorch_grad_cam.metrics.sanity_check import (
    CascadingRandomization,
    RandomizationStep,
    cascading_randomization,
)

__all__ = [
    "CamMultImageConfidenceChange",
    "CascadingRandomization",
    "DeletionCurve",
    "DropInConfidence",
    "IncreaseInConfidence",
    "InsertionCurve",
    "PerturbationCurve",
    "ROADCombined",
    "ROADLeastRelevantFirst",
    "ROADLeastRelevantFirstAverage",
    "ROADMostRelevantFirst",
    "ROADMostRelevantFirstAverage",
    "RandomizationStep",
    "cascading_randomization",
    "noisy_linear_impute",
]
