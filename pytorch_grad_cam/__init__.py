"""gradcam: Class Activation Map methods for PyTorch (import name ``pytorch_grad_cam``)."""

# grad-cam 1.5.7's submodules are attributes of the package after a bare import, as there.
from pytorch_grad_cam import (
    ablation_cam_multilayer as ablation_cam_multilayer,
)
from pytorch_grad_cam import (
    feature_factorization as feature_factorization,
)
from pytorch_grad_cam import (
    fullgrad_cam as fullgrad_cam,
)
from pytorch_grad_cam import (
    metrics as metrics,
)
from pytorch_grad_cam import (
    sobel_cam as sobel_cam,
)
from pytorch_grad_cam import (
    utils as utils,
)
from pytorch_grad_cam.ablation_cam import AblationCAM
from pytorch_grad_cam.ablation_layer import (
    AblationLayer,
    AblationLayerFasterRCNN,
    AblationLayerVit,
)
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.attention_rollout import AttentionRollout
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.deep_feature_factorization import DeepFeatureFactorization
from pytorch_grad_cam.eigen_cam import EigenCAM
from pytorch_grad_cam.eigen_grad_cam import EigenGradCAM
from pytorch_grad_cam.feature_factorization.deep_feature_factorization import run_dff_on_image
from pytorch_grad_cam.fem import FEM
from pytorch_grad_cam.finer_cam import FinerCAM
from pytorch_grad_cam.fullgrad import FullGrad
from pytorch_grad_cam.grad_cam import GradCAM
from pytorch_grad_cam.grad_cam_elementwise import GradCAMElementWise
from pytorch_grad_cam.grad_cam_plusplus import GradCAMPlusPlus
from pytorch_grad_cam.gscore_cam import GScoreCAM
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
from pytorch_grad_cam.hirescam import HiResCAM
from pytorch_grad_cam.is_cam import ISCAM
from pytorch_grad_cam.kpca_cam import KPCA_CAM
from pytorch_grad_cam.layer_cam import LayerCAM
from pytorch_grad_cam.legrad import LeGrad
from pytorch_grad_cam.original_cam import CAM
from pytorch_grad_cam.random_cam import RandomCAM
from pytorch_grad_cam.recipro_cam import ReciproCAM
from pytorch_grad_cam.refine_cam import RefineCAM
from pytorch_grad_cam.score_cam import ScoreCAM
from pytorch_grad_cam.seg_eigen_cam import SegEigenCAM
from pytorch_grad_cam.sess import SESS
from pytorch_grad_cam.shapley_cam import ShapleyCAM
from pytorch_grad_cam.smooth_grad_cam_pp import SmoothGradCAMpp
from pytorch_grad_cam.ss_cam import SSCAM
from pytorch_grad_cam.transformer_attribution import TransformerAttribution
from pytorch_grad_cam.xgrad_cam import XGradCAM

__version__ = "0.1.0"

__all__ = [
    "AblationCAM",
    "AblationLayer",
    "AblationLayerFasterRCNN",
    "AblationLayerVit",
    "ActivationsAndGradients",
    "AttentionRollout",
    "BaseCAM",
    "CAM",
    "DeepFeatureFactorization",
    "EigenCAM",
    "EigenGradCAM",
    "FEM",
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMElementWise",
    "GradCAMPlusPlus",
    "GScoreCAM",
    "GuidedBackpropReLUModel",
    "HiResCAM",
    "ISCAM",
    "KPCA_CAM",
    "LayerCAM",
    "LeGrad",
    "RandomCAM",
    "ReciproCAM",
    "RefineCAM",
    "ScoreCAM",
    "SegEigenCAM",
    "SESS",
    "ShapleyCAM",
    "SmoothGradCAMpp",
    "SSCAM",
    "TransformerAttribution",
    "XGradCAM",
    "run_dff_on_image",
]
