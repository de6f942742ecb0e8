"""Explain a pretrained model's prediction on an image: ``python cam.py --help``."""

import sys

from pytorch_grad_cam.cli import main

if __name__ == "__main__":
    sys.exit(main())
