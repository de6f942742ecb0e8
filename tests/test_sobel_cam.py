"""sobel_cam: the Sobel edge magnitude of the grayscale image, min-max scaled."""

from __future__ import annotations

import numpy as np
import pytest

from pytorch_grad_cam.sobel_cam import sobel_cam


def test_a_vertical_step_edge_peaks_on_the_edge_and_is_zero_where_flat():
    image = np.zeros((6, 9, 3), dtype=np.uint8)
    image[:, 4:] = 255  # columns 0-3 dark, 4-8 bright: the edge lies between 3 and 4
    cam = sobel_cam(image)
    assert cam.dtype == np.float32 and cam.shape == (6, 9)
    # Sobel x at columns 3 and 4 is 4 * 255 on every row (reflected borders keep the
    # step's rows whole); every other column sees a flat neighbourhood.
    expected = np.zeros((6, 9), dtype=np.float32)
    expected[:, 3:5] = 1.0
    np.testing.assert_array_equal(cam, expected)
    np.testing.assert_array_equal(sobel_cam(image.astype(np.float64) / 255), expected)


def test_a_ramp_follows_the_reflected_border_rule():
    # gray = x: inside, G_x = 4 * (f(x + 1) - f(x - 1)) = 8; at the borders
    # BORDER_REFLECT_101 mirrors f(1) onto f(-1), so G_x = 0 there.
    ramp = np.tile(np.arange(7, dtype=np.float32), (5, 1))
    cam = sobel_cam(ramp)
    expected = np.ones((5, 7), dtype=np.float32)
    expected[:, [0, -1]] = 0
    np.testing.assert_allclose(cam, expected, atol=1e-6)
    diagonal = np.add.outer(np.arange(5), np.arange(7)).astype(np.float32)  # x + y
    assert np.allclose(sobel_cam(diagonal)[1:-1, 1:-1], 1.0)  # |G| = 8 sqrt(2) inside
    assert sobel_cam(diagonal)[0, 0] == 0  # both derivatives mirrored away at a corner


def test_channels_are_read_as_rgb():
    image = np.zeros((4, 12, 3), dtype=np.float32)
    image[:, 3:, 0] = 1.0  # a red step between columns 2 and 3
    image[:, 8:, 2] = 1.0  # a blue step between columns 7 and 8
    cam = sobel_cam(image)
    np.testing.assert_allclose(cam[:, 2:4], 1.0, atol=1e-6)
    np.testing.assert_allclose(cam[:, 7:9], 0.114 / 0.299, atol=1e-3)  # luma weights
    assert cam[:, [0, 5, 10]].max() == 0


def test_a_flat_image_gives_zeros_and_bad_images_are_named():
    assert not sobel_cam(np.full((5, 5, 3), 7, dtype=np.uint8)).any()
    with pytest.raises(ValueError, match="img must be an H x W x 3 RGB image"):
        sobel_cam(np.zeros((5, 5, 4)))
    with pytest.raises(ValueError, match="finite"):
        sobel_cam(np.full((5, 5), np.nan))
    with pytest.raises(TypeError, match="numeric image array"):
        sobel_cam(np.zeros((5, 5), dtype=bool))
