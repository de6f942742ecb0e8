"""SESS (Tursun et al., ECCV 2022): windows, scales, the fusion's formula and its oracles."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from conftest import GapLinearNet
from torch import nn

import pytorch_grad_cam
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.sess import SESS, rescale_image, sliding_window, window_starts
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


class CountingGradCAM(GradCAM):
    """GradCAM that records how many windows each call explains."""

    def __init__(self, *args, marker=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.marker = marker
        self.rows = []

    def __call__(self, input_tensor, *args, **kwargs):
        self.rows.append(input_tensor.shape[0])
        return super().__call__(input_tensor, *args, **kwargs)


class CountingModel(nn.Module):
    """A model that records the batch size of every forward pass."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.batches = []

    def forward(self, x):
        self.batches.append(x.shape[0])
        return self.inner(x)


class CoarseNet(nn.Module):
    """Mean brightness of 8 x 8 blocks (a stride-8 convolution), GAP, linear: the CAM's grid
    is 8 pixels, so the base method's map of a small object is a blurred block."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Conv2d(3, 1, 8, stride=8, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.blocks.weight.fill_(1 / 192)
            self.fc.weight.copy_(torch.tensor([[10.0], [-10.0]]))

    def forward(self, x):
        return self.fc(self.relu(self.blocks(x)).mean(dim=(2, 3)))


class ChannelDifferenceNet(nn.Module):
    """score = mean(ReLU(x_0) - ReLU(x_1)); GradCAM's map is ReLU(x_0 - x_1) scaled."""

    def __init__(self):
        super().__init__()
        self.features = nn.ReLU()
        self.fc = nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, -1.0, 0.0]]))

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


def gaussian_profile(size: int) -> torch.Tensor:
    centre, sigma = (size - 1) / 2, size / 4
    bump = torch.exp(-((torch.arange(size) - centre) ** 2) / (2 * sigma**2))
    return bump[:, None] * bump[None, :]


def unit_range(array: torch.Tensor) -> torch.Tensor:
    return (array - array.min()) / (array.max() - array.min())


# ----------------------------------------------------------------------- the surface
def test_signatures_are_the_incumbents():
    parameters = inspect.signature(SESS).parameters
    expected = {
        "model": inspect.Parameter.empty,
        "target_layers": inspect.Parameter.empty,
        "reshape_transform": None,
        "base_method": GradCAM,
        "scales": None,
        "num_scales": 12,
        "scale_step_ratio": 2 / 7,
        "window_size": None,
        "step_size": None,
        "pre_filter_ratio": 0.0,
        "theta": 0.0,
        "pool": "mean",
        "smooth": True,
        "use_softmax_scores": True,
        "batch_size": 32,
    }
    assert [name for name in parameters][: len(expected)] == list(expected)
    assert {name: parameters[name].default for name in expected} == expected
    assert parameters["kwargs"].kind is inspect.Parameter.VAR_KEYWORD
    methods = {
        "forward": ["input_tensor", "targets", "eigen_smooth"],
        "__call__": ["input_tensor", "targets", "eigen_smooth"],
        "collect_patches": ["input_tensor", "window_size", "step_size"],
        "forward_single_image": ["input_tensor", "target", "eigen_smooth"],
        "get_scales": ["window_size"],
        "get_scores": ["patches", "target"],
        "get_target": ["input_tensor"],
        "paste_cam": ["cam", "coordinates", "target_size"],
    }
    for method, names in methods.items():
        positional = [
            p.name
            for p in inspect.signature(getattr(SESS, method)).parameters.values()
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ]
        assert positional == ["self", *names], method
    assert list(inspect.signature(sliding_window).parameters) == [
        "height",
        "width",
        "step_size",
        "window_size",
    ]
    assert list(inspect.signature(window_starts).parameters) == [
        "length",
        "step_size",
        "window_size",
    ]
    from pytorch_grad_cam import sess

    assert sess.GradCAM is GradCAM and pytorch_grad_cam.SESS is SESS
    assert sess.ClassifierOutputTarget is ClassifierOutputTarget
    assert sess.scale_cam_image is pytorch_grad_cam.utils.image.scale_cam_image


# ----------------------------------------------------------------------- windows
def test_window_starts_cover_every_pixel_with_the_step_and_end_flush():
    for length in range(1, 30):
        for window in range(1, length + 1):
            for step in range(1, window + 1):
                starts = window_starts(length, step, window)
                covered = np.zeros(length, dtype=int)
                for start in starts:
                    covered[start : start + window] += 1
                assert covered.min() >= 1
                assert starts[0] == 0 and starts[-1] == length - window
                gaps = np.diff(starts)
                assert (gaps[:-1] == step).all() and ((gaps > 0) & (gaps <= step)).all()
    assert window_starts(7, 2, 3) == [0, 2, 4]
    assert window_starts(8, 3, 4) == [0, 3, 4]
    assert window_starts(4, 1, 4) == [0]


def test_sliding_window_is_every_pair_of_starts_row_by_row():
    windows = sliding_window(5, 7, 2, 3)
    assert windows == [(y, x, y + 3, x + 3) for y in (0, 2) for x in (0, 2, 4)]
    height, width, step, size = 19, 26, 5, 8
    covered = np.zeros((height, width), dtype=int)
    for y0, x0, y1, x1 in sliding_window(height, width, step, size):
        assert (y1 - y0, x1 - x0) == (size, size)
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((5, 2, 6), "window_size=6 is larger than"),
        ((5, 4, 3), "step_size=4 is larger than window_size=3"),
        ((5, 0, 3), "step_size must be a positive int"),
        ((5, 1, 0), "window_size must be a positive int"),
    ],
)
def test_window_errors_name_the_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        window_starts(*arguments)


def test_collect_patches_and_paste_cam(gap_net):
    sess = SESS(gap_net, [gap_net.features])
    image = torch.randn(1, 3, 10, 13)
    patches, coordinates = sess.collect_patches(image, 6, 4)
    assert coordinates == sliding_window(10, 13, 4, 6)
    for patch, (y0, x0, y1, x1) in zip(patches, coordinates):
        assert torch.equal(patch, image[..., y0:y1, x0:x1])
        assert patch.data_ptr() == image[..., y0:, x0:].data_ptr()  # a view, not a copy
    cam = np.arange(24, dtype=np.float32).reshape(4, 6)
    pasted = sess.paste_cam(cam, (3, 5, 7, 11), (9, 12))
    assert pasted.shape == (9, 12) and pasted.dtype == np.float32
    assert np.array_equal(pasted[3:7, 5:11], cam) and pasted.sum() == cam.sum()
    with pytest.raises(ValueError, match="does not fit coordinates"):
        sess.paste_cam(cam, (6, 5, 10, 11), (9, 12))


def test_scales():
    model = GapLinearNet()
    assert SESS(model, [model.features]).get_scales(224) == [224 + 64 * i for i in range(12)]
    three = SESS(model, [model.features], num_scales=3, scale_step_ratio=0.5)
    assert three.get_scales(10) == [10, 15, 20]
    explicit = SESS(model, [model.features], scales=[40, 16, 40, 24])
    assert explicit.get_scales(16) == [16, 24, 40]
    with pytest.raises(ValueError, match=r"scales=\[16, 24, 40\]: \[16\] are smaller"):
        explicit.get_scales(20)
    resized = rescale_image(torch.randn(1, 3, 16, 24), 32)
    assert resized.shape == (1, 3, 32, 48)


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("pool", "median", "pool must be 'mean' or 'max'"),
        ("batch_size", 0, "batch_size must be a positive int"),
        ("num_scales", 2.5, "num_scales must be a positive int"),
        ("window_size", -3, "window_size must be a positive int"),
        ("step_size", True, "step_size must be a positive int"),
        ("pre_filter_ratio", 1.0, r"pre_filter_ratio must be a number in \[0, 1\)"),
        ("theta", -0.1, r"theta must be a number in \[0, 1\)"),
        ("scale_step_ratio", 0, r"scale_step_ratio must be a number in \(0, inf\)"),
        ("scales", [0, 16], "scales must be a non-empty list of positive ints"),
        ("scales", [], "scales must be a non-empty list"),
    ],
)
def test_bad_arguments_are_named(keyword, value, message):
    model = GapLinearNet()
    with pytest.raises(ValueError, match=message):
        SESS(model, [model.features], **{keyword: value})


def test_bad_types_are_named():
    model = GapLinearNet()
    with pytest.raises(TypeError, match="smooth must be True or False"):
        SESS(model, [model.features], smooth="yes")
    with pytest.raises(TypeError, match="base_method must be a CAM class"):
        SESS(model, [model.features], base_method=GradCAM(model, [model.features]))
    sess = SESS(model, [model.features])
    image = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match="targets has 1 entries but input_tensor has 2"):
        sess(image, [ClassifierOutputTarget(0)])
    with pytest.raises(TypeError, match=r"targets\[1\] is a str"):
        sess(image, [ClassifierOutputTarget(0), "cat"])
    with pytest.raises(ValueError, match="input_tensor must have shape B x C x H x W"):
        sess(torch.randn(3, 8, 8))


# ----------------------------------------------------------------------- oracles
@pytest.mark.parametrize(
    ("base_method", "eigen_smooth"),
    [(GradCAM, False), (GradCAM, True), (GradCAMPlusPlus, False), (EigenCAM, False)],
)
@pytest.mark.parametrize("smooth", [True, False])
def test_one_scale_one_window_is_the_base_method(gap_net, base_method, eigen_smooth, smooth):
    images = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(4)]
    sess = SESS(gap_net, [gap_net.features], base_method=base_method, scales=[12], smooth=smooth)
    maps = sess(images, targets, eigen_smooth)
    expected = base_method(gap_net, [gap_net.features])(images, targets, eigen_smooth=eigen_smooth)
    assert maps.dtype == np.float32 and maps.shape == (2, 12, 12)
    np.testing.assert_allclose(maps, expected, atol=1e-5)
    single = sess.forward_single_image(images[1:], targets[1], eigen_smooth)
    np.testing.assert_allclose(single, expected[1], atol=1e-5)


@pytest.mark.parametrize("use_softmax_scores", [True, False])
@pytest.mark.parametrize("smooth", [True, False])
def test_two_windows_follow_the_fusion_formula(gap_net, use_softmax_scores, smooth):
    image = torch.randn(1, 3, 12, 18, generator=torch.Generator().manual_seed(4))
    crops = [image[..., :, 0:12], image[..., :, 6:18]]
    with torch.no_grad():
        logits = torch.cat([gap_net(crop) for crop in crops])
    category = int(logits.min(dim=0).values.argmax())  # positive on both windows
    assert bool((logits[:, category] > 0).all())
    target = ClassifierOutputTarget(category)
    gradcam = GradCAM(gap_net, [gap_net.features])
    maps = [torch.from_numpy(gradcam(crop, [target])[0]) for crop in crops]
    if use_softmax_scores:
        weights = torch.softmax(logits, dim=1)[:, category]
    else:
        weights = logits[:, category]
    profile = gaussian_profile(12) if smooth else torch.ones(12, 12)
    numerator, denominator = torch.zeros(12, 18), torch.zeros(12, 18)
    for x0, weight, window_map in zip((0, 6), weights, maps):
        numerator[:, x0 : x0 + 12] += weight * profile * window_map
        denominator[:, x0 : x0 + 12] += profile
    expected = unit_range(numerator / denominator)
    sess = SESS(
        gap_net,
        [gap_net.features],
        scales=[12],
        step_size=6,
        smooth=smooth,
        use_softmax_scores=use_softmax_scores,
    )
    np.testing.assert_allclose(sess(image, [target])[0], expected.numpy(), atol=1e-5)
    expected_scores = weights.numpy() if use_softmax_scores else logits[:, category].numpy()
    np.testing.assert_allclose(sess.get_scores(crops, target), expected_scores, rtol=1e-5)


def two_window_image(pattern: str) -> torch.Tensor:
    """16 x 24: a blob in the left window's own part, nothing in the overlap, and in the
    right window's own part a +1 / -1 pattern whose mean (the window's score) is 0."""
    image = torch.zeros(1, 3, 16, 24)
    image[0, 0, 4:12, 2:6] = 1.0
    rows, columns = torch.meshgrid(torch.arange(16), torch.arange(8), indexing="ij")
    positive = (rows + columns) % 2 == 0 if pattern == "checker" else rows % 2 == 0
    image[0, 0, :, 16:] = positive.float()
    image[0, 1, :, 16:] = (~positive).float()
    return image


def test_a_window_of_zero_score_contributes_nothing():
    model = ChannelDifferenceNet().eval()
    target = [ClassifierOutputTarget(0)]
    checker, stripes = two_window_image("checker"), two_window_image("stripes")
    with torch.no_grad():
        assert model(checker[..., 8:24]).item() == 0 == model(stripes[..., 8:24]).item()
    gradcam = GradCAM(model, [model.features])
    right = [gradcam(image[..., 8:24], target)[0] for image in (checker, stripes)]
    assert np.abs(right[0] - right[1]).max() > 0.5  # the right window's maps differ...
    raw = SESS(model, [model.features], scales=[16], step_size=8, use_softmax_scores=False)
    maps = [raw(image, target)[0] for image in (checker, stripes)]
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-6)  # ...but weigh nothing
    assert maps[0][:, 16:].max() == 0 and maps[0].max() == 1
    # With softmax over one class every window weighs 1, and the right window shows.
    softmax = SESS(model, [model.features], scales=[16], step_size=8)
    assert np.abs(softmax(checker, target)[0] - softmax(stripes, target)[0]).max() > 0.3


def test_pre_filtering_explains_only_the_best_windows(gap_net):
    image = torch.randn(1, 3, 12, 18, generator=torch.Generator().manual_seed(5))
    target = ClassifierOutputTarget(2)
    crops = [image[..., :, 0:12], image[..., :, 6:18]]
    with torch.no_grad():
        probabilities = torch.softmax(torch.cat([gap_net(c) for c in crops]), dim=1)[:, 2]
    best = int(probabilities.argmax())
    sess = SESS(
        gap_net,
        [gap_net.features],
        base_method=CountingGradCAM,
        scales=[12],
        step_size=6,
        pre_filter_ratio=0.5,
    )
    result = sess(image, [target])[0]
    assert sess.base.rows == [1]
    best_map = GradCAM(gap_net, [gap_net.features])(crops[best], [target])[0]
    expected = sess.paste_cam(best_map, (0, 6 * best, 12, 6 * best + 12), (12, 18))
    np.testing.assert_allclose(result, expected, atol=1e-5)
    sess.pre_filter_ratio = 0.99  # never all: the best window stays
    np.testing.assert_allclose(sess(image, [target])[0], expected, atol=1e-5)
    sess.pre_filter_ratio = 0.4  # floor(0.4 * 2) = 0 windows dropped
    sess(image, [target])
    assert sess.base.rows == [1, 1, 2]


def test_theta_zeroes_each_windows_weak_values(gap_net):
    image = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(6))
    target = [ClassifierOutputTarget(0)]
    base = GradCAM(gap_net, [gap_net.features])(image, target)[0]
    thresholded = base * (base >= 0.6)
    expected = (thresholded - thresholded.min()) / (thresholded.max() - thresholded.min())
    sess = SESS(gap_net, [gap_net.features], scales=[12], theta=0.6)
    np.testing.assert_allclose(sess(image, target)[0], expected, atol=1e-5)


def test_the_map_finds_a_small_object_the_coarse_base_map_blurs():
    model = CoarseNet().eval()
    image = torch.zeros(1, 3, 32, 32)
    image[..., 8:11, 16:19] = 1.0  # a 3 x 3 object in the corner of an 8 x 8 block
    target = [ClassifierOutputTarget(0)]
    base = GradCAM(model, [model.relu])(image, target)[0]
    sess = SESS(model, [model.relu], scales=[32, 64, 96, 128], window_size=32)
    enhanced = sess(image, target)[0]

    def on_object(cam: np.ndarray) -> tuple[bool, float]:
        row, column = np.unravel_index(cam.argmax(), cam.shape)
        return 8 <= row < 11 and 16 <= column < 19, float(cam[8:11, 16:19].sum() / cam.sum())

    base_peak, base_share = on_object(base)
    peak, share = on_object(enhanced)
    assert not base_peak and peak  # the base map peaks at the block's centre, SESS on the object
    assert share > 3 * base_share  # 0.22 against 0.066 of the map's mass on the object
    assert enhanced[9, 17] == 1.0


def test_batches_give_the_same_map_and_the_documented_forwards(gap_net):
    image = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    model = CountingModel(gap_net)
    target = [ClassifierOutputTarget(3)]
    maps = {}
    for batch_size in (1, 4, 32):
        sess = SESS(
            model,
            [gap_net.features],
            base_method=CountingGradCAM,
            scales=[16, 24, 32],
            step_size=8,
            batch_size=batch_size,
        )
        model.batches.clear()
        maps[batch_size] = sess(image, target)[0]
        windows = 1 + 4 + 9
        expected = [min(batch_size, windows - s) for s in range(0, windows, batch_size)]
        assert sess.base.rows == expected
        assert model.batches == [1, *expected]  # the whole image, then the base's calls
    np.testing.assert_allclose(maps[1], maps[32], atol=1e-5)
    np.testing.assert_allclose(maps[4], maps[32], atol=1e-5)
    filtered = SESS(
        model,
        [gap_net.features],
        scales=[16, 24, 32],
        step_size=8,
        batch_size=4,
        pre_filter_ratio=0.5,
    )
    model.batches.clear()
    filtered(image, target)
    assert model.batches == [1, 4, 4, 4, 2, 4, 3]  # image, 14 scored, 7 explained


def test_defaults_targets_and_tensors(gap_net):
    images = torch.randn(2, 3, 10, 10, generator=torch.Generator().manual_seed(8))
    sess = SESS(gap_net, [gap_net.features], num_scales=3)
    with torch.no_grad():
        top = gap_net(images).argmax(dim=1).tolist()
    by_default = sess(images)
    np.testing.assert_allclose(by_default, sess(images, top), atol=1e-6)
    explicit = sess(images, [ClassifierOutputTarget(c) for c in top], as_tensor=True)
    assert isinstance(explicit, torch.Tensor) and explicit.dtype == torch.float32
    np.testing.assert_allclose(by_default, explicit.numpy(), atol=1e-6)
    assert torch.allclose(sess.outputs, gap_net(images))
    assert sess.get_target(images[1:]).category == top[1]
    assert by_default.min() == 0 and np.allclose(by_default.max(axis=(1, 2)), 1)


def test_kwargs_go_to_the_base_method(gap_net):
    sess = SESS(gap_net, [gap_net.features], base_method=CountingGradCAM, marker=7)
    assert sess.base.marker == 7 and sess.model is gap_net
    assert sess.target_layers == [gap_net.features]


def test_the_model_is_left_as_found(gap_net):
    gap_net.train()
    gap_net.features[0].eval()
    gap_net.fc.weight.requires_grad_(False)
    flags = [module.training for module in gap_net.modules()]
    state = {key: value.clone() for key, value in gap_net.state_dict().items()}
    image = torch.randn(1, 3, 12, 12)
    with SESS(gap_net, [gap_net.features], num_scales=2, pre_filter_ratio=0.3) as sess:
        sess(image)
        assert sess.outputs is not None
    assert sess.outputs is None
    assert [module.training for module in gap_net.modules()] == flags
    hooks = sum(len(getattr(m, name)) for m in gap_net.modules() for name in HOOK_DICTS)
    assert hooks == 0
    assert all(p.grad is None for p in gap_net.parameters())
    assert [p.requires_grad for p in gap_net.parameters()] == [True] * 4 + [False, True]
    assert all(torch.equal(state[k], v) for k, v in gap_net.state_dict().items())
