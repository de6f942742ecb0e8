"""Every method's maps on fixed small models: the behaviour a refactor must keep.

``python tests/reference_maps.py`` writes ``tests/data/reference_maps.npz``;
``tests/test_reference_maps.py`` recomputes each entry and compares. Regenerate the file
only for a deliberate, documented change of a method's maps.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import GapLinearNet, TinyViT  # noqa: E402

import pytorch_grad_cam as cams  # noqa: E402
from pytorch_grad_cam.metrics import (  # noqa: E402
    DeletionCurve,
    DropInConfidence,
    ROADMostRelevantFirst,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform  # noqa: E402

REFERENCE_FILE = Path(__file__).resolve().parent / "data" / "reference_maps.npz"

#: The layer CAMs run on both CNNs; the transformer ones on TinyViT too.
LAYER_METHODS = [
    "GradCAM",
    "HiResCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "XGradCAM",
    "LayerCAM",
    "EigenCAM",
    "EigenGradCAM",
    "AblationCAM",
    "ScoreCAM",
    "RandomCAM",
    "FEM",
    "KPCA_CAM",
    "SegEigenCAM",
    "ShapleyCAM",
    "SmoothGradCAMpp",
    "SSCAM",
    "ISCAM",
    "CAM",
]
SEEDED = {"RandomCAM": {"seed": 3}, "SmoothGradCAMpp": {"generator": 5}, "SSCAM": {"generator": 6}}


def models() -> dict[str, tuple[torch.nn.Module, list[torch.nn.Module], torch.Tensor, dict]]:
    """Name -> (model, target layers, input, constructor extras), all seeded."""
    torch.manual_seed(0)
    gap = GapLinearNet().eval()
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    torch.manual_seed(2)
    vit = TinyViT().eval()
    generator = torch.Generator().manual_seed(4)
    return {
        "gap": (gap, [gap.features], torch.randn(2, 3, 12, 10, generator=generator), {}),
        "resnet": (
            resnet,
            [resnet.layer3[-1], resnet.layer4[-1]],
            torch.randn(2, 3, 48, 40, generator=generator),
            {},
        ),
        "vit": (
            vit,
            [vit.blocks[-1].norm1],
            torch.randn(2, 3, 16, 16, generator=generator),
            {"reshape_transform": lambda t: vit_reshape_transform(t, 4, 4)},
        ),
    }


TARGETS = [ClassifierOutputTarget(1), ClassifierOutputTarget(4)]


def entries() -> dict[str, Callable[[], np.ndarray]]:
    """Name -> a function computing that entry's array."""
    found: dict[str, Callable[[], np.ndarray]] = {}
    for model_name, (model, layers, x, extras) in models().items():
        for method in LAYER_METHODS:
            if method == "CAM" and model_name != "gap":
                continue  # the original CAM needs a GAP + linear head on the layer
            if method in ("SSCAM", "ISCAM", "SmoothGradCAMpp") and model_name == "resnet":
                continue  # many passes; ScoreCAM and GradCAM++ cover their steps there

            def run(method=method, model=model, layers=layers, x=x, extras=extras):
                options = {**extras, **SEEDED.get(method, {})}
                if method in ("AblationCAM", "ScoreCAM", "SSCAM", "ISCAM"):
                    options["batch_size"] = 64
                    layers = layers[-1:]  # the deepest layer: fewer channels to perturb
                if method in ("SSCAM", "ISCAM", "SmoothGradCAMpp"):
                    options["n_samples"] = 3
                cam = getattr(cams, method)(model, layers, **options)
                return cam(x, TARGETS, as_tensor=True).cpu().numpy()

            found[f"{model_name}/{method}"] = run

        def eigen(model=model, layers=layers, x=x, extras=extras):
            return cams.GradCAM(model, layers, **extras)(x, TARGETS, eigen_smooth=True)

        def finer(model=model, layers=layers, x=x, extras=extras):
            return cams.FinerCAM(model, layers, extras.get("reshape_transform"))(
                x, None, False, 0.5
            )

        def refine(model=model, layers=layers, x=x, extras=extras):
            return cams.RefineCAM(model, layers, extras.get("reshape_transform"))(x, TARGETS)

        found[f"{model_name}/GradCAM-eigen_smooth"] = eigen
        found[f"{model_name}/FinerCAM"] = finer
        if len(layers) > 1:
            found[f"{model_name}/RefineCAM"] = refine
    gap, gap_layers, gap_x, _ = models()["gap"]
    resnet, resnet_layers, resnet_x, _ = models()["resnet"]
    vit, _, vit_x, _ = models()["vit"]
    found["resnet/FullGrad"] = lambda: cams.FullGrad(resnet, [])(resnet_x, TARGETS)
    found["gap/aug_smooth"] = lambda: cams.GradCAM(gap, gap_layers)(gap_x, TARGETS, aug_smooth=True)
    found["gap/raw"] = lambda: cams.GradCAM(gap, gap_layers)(gap_x, TARGETS, scale=False)
    found["vit/AttentionRollout"] = lambda: cams.AttentionRollout(vit)(vit_x)
    found["resnet/guided_backprop"] = lambda: cams.GuidedBackpropReLUModel(resnet)(resnet_x, 1)

    def factorization():
        dff = cams.DeepFeatureFactorization(
            resnet, resnet_layers[1], computation_on_concepts=resnet.fc
        )
        concepts, explanations, outputs = dff(resnet_x, n_components=3)
        return np.concatenate([concepts.ravel(), explanations.ravel(), outputs.ravel()])

    found["resnet/DeepFeatureFactorization"] = factorization

    def metrics():
        maps = cams.GradCAM(resnet, resnet_layers)(resnet_x, TARGETS)
        return np.concatenate(
            [
                DropInConfidence()(resnet_x, maps, TARGETS, resnet),
                ROADMostRelevantFirst(80)(resnet_x, maps, TARGETS, resnet),
                DeletionCurve(n_steps=8)(resnet_x, maps, TARGETS, resnet),
            ]
        )

    found["resnet/metrics"] = metrics
    return found


def main() -> None:
    """Compute every entry and write the reference file."""
    arrays = {name: np.asarray(compute(), dtype=np.float32) for name, compute in entries().items()}
    REFERENCE_FILE.parent.mkdir(exist_ok=True)
    np.savez_compressed(REFERENCE_FILE, **arrays)
    print(f"wrote {len(arrays)} entries to {REFERENCE_FILE}")


if __name__ == "__main__":
    main()
