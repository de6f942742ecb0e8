"""Metrics that judge a map by what the model does when the image is perturbed by it.

- ``cam_mult_image``: the image multiplied by its map (Grad-CAM++'s Average Drop and
  Increase in Confidence); ``multiply_tensor_with_cam``.
- ``road``: ROAD, pixels removed most / least relevant first and imputed (Rong et al. 2022),
  with its ``NoisyLinearImputer``.
- ``perturbation_confidence``: the building blocks of both, for one's own perturbations:
  ``PerturbationConfidenceMetric(perturbation)``, ``RemoveMostRelevantFirst`` /
  ``RemoveLeastRelevantFirst(percentile, imputer)``, ``AveragerAcrossThresholds``.
- ``arcc``: ADCC's ``Complexity`` and ``Coherency`` (Poppi et al. 2021) and ``ARCC``
  (Domeniconi et al., "How to Evaluate and Refine your CAM"), their harmonic mean with
  the scaled ROAD score.
- ``perturbation_curves``: RISE's deletion and insertion curves (Petsiuk et al. 2018).
- ``sanity_check``: the model-parameter randomisation test (Adebayo et al. 2018).

Each perturbation metric is called as ``metric(input_tensor, cams, targets, model)`` (the
maps by keyword as ``cams=`` or ``grayscale_cams=``, both accepted everywhere) and returns
one float32 value per image (a numpy array). The model runs in eval mode, without
autograd, on its own device, ``batch_size`` perturbed images at a time; its train/eval
flags are restored afterwards. Module paths, names and signatures are those of grad-cam
1.5.7, with this project's options (``batch_size``, ``noise``, ``seed``, ...) after them.
"""

from __future__ import annotations

from pytorch_grad_cam.metrics import (
    arcc,
    cam_mult_image,
    noisy_linear_imputer,
    perturbation_confidence,
    perturbation_curves,
    road,
    sanity_check,
)
from pytorch_grad_cam.metrics.arcc import ARCC, Coherency, Complexity, batch_pearson_coherency
from pytorch_grad_cam.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
    multiply_tensor_with_cam,
)
from pytorch_grad_cam.metrics.noisy_linear_imputer import NoisyLinearImputer, noisy_linear_impute
from pytorch_grad_cam.metrics.perturbation_confidence import (
    AveragerAcrossThresholds,
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
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
)
from pytorch_grad_cam.metrics.sanity_check import (
    CascadingRandomization,
    RandomizationStep,
    cascading_randomization,
)

__all__ = [
    "ARCC",
    "AveragerAcrossThresholds",
    "CamMultImageConfidenceChange",
    "CascadingRandomization",
    "Coherency",
    "Complexity",
    "DeletionCurve",
    "DropInConfidence",
    "IncreaseInConfidence",
    "InsertionCurve",
    "NoisyLinearImputer",
    "PerturbationConfidenceMetric",
    "PerturbationCurve",
    "ROADCombined",
    "ROADLeastRelevantFirst",
    "ROADLeastRelevantFirstAverage",
    "ROADMostRelevantFirst",
    "ROADMostRelevantFirstAverage",
    "RandomizationStep",
    "RemoveLeastRelevantFirst",
    "RemoveMostRelevantFirst",
    "arcc",
    "batch_pearson_coherency",
    "cam_mult_image",
    "cascading_randomization",
    "multiply_tensor_with_cam",
    "noisy_linear_impute",
    "noisy_linear_imputer",
    "perturbation_confidence",
    "perturbation_curves",
    "road",
    "sanity_check",
]
