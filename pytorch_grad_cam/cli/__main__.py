"""``python -m pytorch_grad_cam.cli``: the same as ``cam.py`` / ``gradcam``."""

import sys

from pytorch_grad_cam.cli.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
