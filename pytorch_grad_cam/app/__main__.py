"""``python -m pytorch_grad_cam.app``: the same as ``gradcam app``."""

import sys

from pytorch_grad_cam.app import main

sys.exit(main())
