"""pytorch_grad_cam.utils.image against the formulas, computed independently in the tests."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pytorch_grad_cam.utils.image import (
    deprocess_image,
    preprocess_image,
    scale_cam_image,
    show_cam_on_image,
)


def _image(height=5, width=7, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((height, width, 3), dtype=np.float32)


def _linear_resize_matrix(source: int, target: int) -> np.ndarray:
    """``target x source`` matrix of 1-D linear interpolation with half-pixel centres
    (OpenCV's INTER_LINEAR, torch's ``align_corners=False``), edges clamped."""
    matrix = np.zeros((target, source), dtype=np.float64)
    for out in range(target):
        position = (out + 0.5) * source / target - 0.5
        position = min(max(position, 0.0), source - 1.0)
        low = int(np.floor(position))
        high = min(low + 1, source - 1)
        fraction = position - low
        matrix[out, low] += 1 - fraction
        matrix[out, high] += fraction
    return matrix


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return (a - a.min()) / (a.max() - a.min())


# --------------------------------------------------------------------- preprocess_image
class TestPreprocessImage:
    def test_default_mean_std_is_exact(self):
        img = _image()
        tensor = preprocess_image(img)
        expected = ((img - 0.5) / 0.5).transpose(2, 0, 1)[None]
        assert isinstance(tensor, torch.Tensor)
        assert tensor.dtype == torch.float32
        assert tuple(tensor.shape) == (1, 3, 5, 7)
        np.testing.assert_array_equal(tensor.numpy(), expected.astype(np.float32))

    def test_custom_mean_std_per_channel_is_exact(self):
        img = _image(4, 3, seed=1)
        mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
        std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
        tensor = preprocess_image(img, mean=list(mean), std=list(std))
        expected = np.empty((1, 3, 4, 3), dtype=np.float32)
        for channel in range(3):
            expected[0, channel] = (img[:, :, channel] - mean[channel]) / std[channel]
        np.testing.assert_array_equal(tensor.numpy(), expected)

    def test_known_values_by_hand(self):
        img = np.zeros((1, 2, 3), dtype=np.float32)
        img[0, 0] = [0.0, 0.5, 1.0]
        img[0, 1] = [0.25, 0.75, 0.1]
        tensor = preprocess_image(img, mean=[0.0, 0.5, 1.0], std=[0.5, 0.25, 2.0])
        expected = np.array(
            [[[[0.0, 0.5]], [[0.0, 1.0]], [[0.0, -0.45]]]],
            dtype=np.float32,
        )
        np.testing.assert_allclose(tensor.numpy(), expected, rtol=0, atol=1e-7)

    def test_result_is_contiguous_and_independent_of_input(self):
        img = _image()
        tensor = preprocess_image(img)
        assert tensor.is_contiguous()
        before = tensor.clone()
        img[:] = 0.0
        assert torch.equal(tensor, before)

    def test_rejects_non_hwc(self):
        with pytest.raises(ValueError, match="H x W x C"):
            preprocess_image(np.zeros((4, 4), dtype=np.float32))


# --------------------------------------------------------------------- deprocess_image
def _deprocess_oracle(img: np.ndarray) -> np.ndarray:
    """The formula as floats in [0, 255] (before the conversion to uint8)."""
    img = img.astype(np.float64)
    centred = (img - img.mean()) / (img.std() + 1e-5)
    return np.clip(centred * 0.1 + 0.5, 0, 1) * 255


class TestDeprocessImage:
    def test_matches_formula_on_random_array(self):
        rng = np.random.default_rng(3)
        img = rng.normal(2.0, 3.0, size=(6, 5, 3)).astype(np.float32)
        result = deprocess_image(img)
        assert result.dtype == np.uint8
        assert result.shape == img.shape
        oracle = _deprocess_oracle(img)
        # uint8 conversion: the nearest integer (so at most half a level off).
        assert np.abs(result.astype(np.float64) - oracle).max() <= 0.5 + 1e-3

    def test_known_values_by_hand(self):
        # mean 0, std 1: -1 -> 0.5 - 0.1 = 0.4 -> 102, +1 -> 0.6 -> 153, 0 -> 0.5 -> 127.5.
        img = np.array([[[-1.0], [1.0]], [[1.0], [-1.0]]], dtype=np.float32)
        result = deprocess_image(img)
        np.testing.assert_array_equal(result, np.array([[[102], [153]], [[153], [102]]]))

    def test_clips_far_values(self):
        # One huge outlier: after centring it is > +5 std (-> 255), the rest slightly below
        # the mean (-> just under 127.5), never below 0.
        img = np.zeros((10, 10, 3), dtype=np.float32)
        img[0, 0, 0] = 1000.0
        result = deprocess_image(img)
        assert result[0, 0, 0] == 255
        oracle = _deprocess_oracle(img)
        assert oracle[0, 0, 0] == 255.0
        assert np.abs(result.astype(np.float64) - oracle).max() <= 0.5 + 1e-3
        # And the low side: a huge negative outlier clips to 0.
        assert deprocess_image(-img)[0, 0, 0] == 0

    def test_constant_image_is_mid_grey_no_nan(self):
        img = np.full((3, 4, 3), 7.25, dtype=np.float32)
        result = deprocess_image(img)
        # (x - mean) = 0, / (0 + 1e-5) = 0 -> 0.5 -> 127.5 -> 127 or 128.
        assert result.min() == result.max()
        assert int(result[0, 0, 0]) in (127, 128)


# --------------------------------------------------------------------- show_cam_on_image
def _blend_oracle(img, mask, image_weight=0.5, use_rgb=False, colormap=cv2.COLORMAP_JET):
    levels = np.uint8(np.round(255 * np.asarray(mask, dtype=np.float64)))
    heat = cv2.applyColorMap(levels, colormap)
    if use_rgb:
        heat = heat[..., ::-1]
    blended = (1 - image_weight) * heat.astype(np.float64) / 255 + image_weight * img
    return 255 * blended / blended.max()


def _assert_uint8_close(result, oracle_0_255):
    assert result.dtype == np.uint8
    assert result.shape == oracle_0_255.shape
    assert np.abs(result.astype(np.float64) - oracle_0_255).max() <= 0.5 + 1e-3


class TestShowCamOnImage:
    def test_zero_mask_jet_colour_and_blend(self):
        img = _image(4, 6, seed=5)
        mask = np.zeros((4, 6), dtype=np.float32)
        # JET at level 0, computed by OpenCV itself (BGR).
        jet0 = cv2.applyColorMap(np.zeros((1, 1), np.uint8), cv2.COLORMAP_JET)[0, 0]
        heat = np.broadcast_to(jet0.astype(np.float64) / 255, img.shape)
        for weight in (0.0, 0.3, 0.5, 1.0):
            result = show_cam_on_image(img, mask, image_weight=weight)
            blended = (1 - weight) * heat + weight * img.astype(np.float64)
            _assert_uint8_close(result, 255 * blended / blended.max())

    def test_result_is_rescaled_so_max_is_255(self):
        img = np.full((3, 3, 3), 0.2, dtype=np.float32)
        mask = np.zeros((3, 3), dtype=np.float32)
        result = show_cam_on_image(img, mask, image_weight=1.0)
        # The blend is the image (0.2 everywhere), divided by its max -> 1 -> 255.
        np.testing.assert_array_equal(result, np.full((3, 3, 3), 255, np.uint8))

    def test_varying_mask_matches_oracle(self):
        img = _image(3, 4, seed=6)
        levels = np.array([[0, 17, 51, 85], [102, 136, 170, 204], [221, 238, 250, 255]])
        mask = (levels / 255.0).astype(np.float32)
        result = show_cam_on_image(img, mask, image_weight=0.4)
        _assert_uint8_close(result, _blend_oracle(img, mask, image_weight=0.4))

    def test_use_rgb_swaps_channels_of_heatmap(self):
        mask = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
        img = np.zeros((3, 4, 3), dtype=np.float32)
        # image_weight=0: only the heat map; with a black image the result is the heat map
        # rescaled, BGR by default and RGB with use_rgb.
        bgr = show_cam_on_image(img, mask, image_weight=0.0)
        rgb = show_cam_on_image(img, mask, use_rgb=True, image_weight=0.0)
        np.testing.assert_array_equal(rgb, bgr[..., ::-1])
        _assert_uint8_close(bgr, _blend_oracle(img, mask, 0.0))
        _assert_uint8_close(rgb, _blend_oracle(img, mask, 0.0, use_rgb=True))
        # JET is not symmetric in B and R: the swap is visible.
        assert not np.array_equal(rgb, bgr)

    def test_use_rgb_with_image(self):
        img = _image(3, 4, seed=7)
        mask = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
        result = show_cam_on_image(img, mask, use_rgb=True, image_weight=0.6)
        _assert_uint8_close(result, _blend_oracle(img, mask, 0.6, use_rgb=True))

    def test_other_colormap(self):
        img = _image(2, 5, seed=8)
        mask = np.array([[0, 0.2, 0.4, 0.6, 0.8], [1.0, 0.0, 1.0, 0.0, 1.0]], np.float32)
        result = show_cam_on_image(img, mask, colormap=cv2.COLORMAP_VIRIDIS)
        _assert_uint8_close(result, _blend_oracle(img, mask, colormap=cv2.COLORMAP_VIRIDIS))

    @pytest.mark.parametrize("bad", [1.5, -0.1])
    def test_rejects_img_outside_unit_range(self, bad):
        img = _image(3, 3)
        img[1, 1, 1] = bad
        with pytest.raises(ValueError, match=r"img must be float in \[0, 1\]"):
            show_cam_on_image(img, np.zeros((3, 3), np.float32))

    def test_rejects_uint8_image(self):
        img = np.full((3, 3, 3), 200, np.uint8)
        with pytest.raises(ValueError, match="img"):
            show_cam_on_image(img, np.zeros((3, 3), np.float32))

    @pytest.mark.parametrize("weight", [-0.01, 1.01, 2])
    def test_rejects_image_weight_outside_unit_range(self, weight):
        with pytest.raises(ValueError, match="image_weight"):
            show_cam_on_image(_image(3, 3), np.zeros((3, 3), np.float32), image_weight=weight)

    @pytest.mark.parametrize("shape", [(3, 4), (4, 3), (1, 3, 3), (3, 3, 1)])
    def test_rejects_mask_of_wrong_shape(self, shape):
        with pytest.raises(ValueError, match="mask") as info:
            show_cam_on_image(_image(3, 3), np.zeros(shape, np.float32))
        assert str(tuple(shape)) in str(info.value)


# --------------------------------------------------------------------- scale_cam_image
class TestScaleCamImage:
    def test_each_map_min_max_scaled_independently(self):
        rng = np.random.default_rng(9)
        cams = np.stack(
            [
                rng.normal(size=(4, 5)),
                100 + 50 * rng.normal(size=(4, 5)),
                -3 + 1e-2 * rng.normal(size=(4, 5)),
            ]
        ).astype(np.float32)
        result = scale_cam_image(cams)
        assert result.dtype == np.float32
        assert result.shape == cams.shape
        for index in range(3):
            np.testing.assert_allclose(result[index], _minmax(cams[index]), atol=2e-5)
            assert result[index].min() == 0.0
            assert result[index].max() == pytest.approx(1.0, abs=1e-6)

    def test_known_values(self):
        cams = np.array([[[1.0, 3.0], [5.0, 2.0]], [[-2.0, -2.0], [0.0, -1.0]]], np.float32)
        expected = np.array([[[0.0, 0.5], [1.0, 0.25]], [[0.0, 0.0], [1.0, 0.5]]], np.float32)
        np.testing.assert_allclose(scale_cam_image(cams), expected, atol=1e-7)

    @pytest.mark.parametrize("value", [0.0, 1.0, -4.5, 1e6])
    def test_constant_map_gives_zeros_not_nan(self, value):
        cams = np.stack([np.full((3, 4), value), np.arange(12.0).reshape(3, 4)]).astype(np.float32)
        result = scale_cam_image(cams)
        assert np.isfinite(result).all()
        np.testing.assert_array_equal(result[0], np.zeros((3, 4), np.float32))
        np.testing.assert_allclose(result[1], np.arange(12.0).reshape(3, 4) / 11, atol=1e-6)

    def test_target_size_is_width_height_like_opencv(self):
        rng = np.random.default_rng(10)
        cams = rng.random((2, 5, 7)).astype(np.float32)
        width, height = 11, 4
        result = scale_cam_image(cams, (width, height))
        assert result.shape == (2, height, width)
        rows = _linear_resize_matrix(5, height)
        cols = _linear_resize_matrix(7, width)
        for index in range(2):
            scaled = _minmax(cams[index])
            expected = rows @ scaled @ cols.T
            np.testing.assert_allclose(result[index], expected, atol=1e-5)
            # OpenCV's resize with the same (width, height) agrees.
            opencv = cv2.resize(scaled.astype(np.float32), (width, height))
            np.testing.assert_allclose(result[index], opencv, atol=1e-5)

    def test_downscale_matches_opencv(self):
        rng = np.random.default_rng(11)
        cams = rng.random((1, 8, 6)).astype(np.float32)
        result = scale_cam_image(cams, (3, 4))
        assert result.shape == (1, 4, 3)
        expected = cv2.resize(_minmax(cams[0]).astype(np.float32), (3, 4))
        np.testing.assert_allclose(result[0], expected, atol=1e-5)

    def test_resize_is_after_scaling(self):
        # After scaling, linear interpolation stays inside [0, 1] and keeps the extremes
        # of a map whose extremes sit at corners.
        cams = np.arange(12, dtype=np.float32).reshape(1, 3, 4) * 7 - 20
        result = scale_cam_image(cams, (8, 6))
        assert result.min() == pytest.approx(0.0, abs=1e-7)
        assert result.max() == pytest.approx(1.0, abs=1e-6)

    def test_same_size_is_identity_after_scaling(self):
        cams = np.array([[[0.0, 2.0, 4.0], [1.0, 3.0, 8.0]]], np.float32)
        result = scale_cam_image(cams, (3, 2))
        np.testing.assert_allclose(result, cams / 8, atol=1e-7)

    def test_three_d_maps_target_size_is_width_height_depth(self):
        rng = np.random.default_rng(12)
        cams = rng.random((2, 2, 3, 4)).astype(np.float32)  # B x D x H x W
        width, height, depth = 6, 5, 4
        result = scale_cam_image(cams, (width, height, depth))
        assert result.shape == (2, depth, height, width)
        d = _linear_resize_matrix(2, depth)
        h = _linear_resize_matrix(3, height)
        w = _linear_resize_matrix(4, width)
        for index in range(2):
            scaled = _minmax(cams[index])
            expected = np.einsum("ad,bh,cw,dhw->abc", d, h, w, scaled)
            np.testing.assert_allclose(result[index], expected, atol=1e-5)

    def test_accepts_list_input_and_does_not_modify_input(self):
        cams = np.array([[[2.0, 4.0], [6.0, 10.0]]], np.float32)
        before = cams.copy()
        result = scale_cam_image(cams)
        np.testing.assert_array_equal(cams, before)
        np.testing.assert_allclose(result, (before - 2) / 8, atol=1e-7)
        np.testing.assert_allclose(scale_cam_image(cams.tolist()), result, atol=0)
