"""ScoreCAM against a reference that materialises every masked input at once; dedup, memory,
model state, batch size, progress bar and host syncs."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torchvision
from conftest import TinyViT
from helpers import (
    TARGETS3,
    CountScalarReads,
    DuplicatedChannelsNet,
    PeakTensorBytes,
    RowCounter,
    SmallConvNet,
    WideNet,
    assert_same_state,
    close,
    layer_outputs,
    min_max,
    resnet_in_training_mode,
    seeded,
    sharp,
    snapshot,
    upsample,
    upsample_masks,
)
from torch import nn

from pytorch_grad_cam.score_cam import ScoreCAM
from pytorch_grad_cam.utils.augmentation import default_tta_transforms
from pytorch_grad_cam.utils.maps import first_principal_component
from pytorch_grad_cam.utils.model_targets import (
    ClassifierOutputTarget,
)
from pytorch_grad_cam.utils.reshape_transforms import vit_reshape_transform

# --------------------------------------------------------------------- the reference


def reference_weights(model, activations, x, targets) -> torch.Tensor:
    """Softmax of the target scores of all C masked images, run in ONE forward per image."""
    weights = []
    with torch.no_grad():
        for b in range(x.shape[0]):
            masks = min_max(upsample_masks(activations[b], x.shape[2:]))  # C x *size
            masked = masks.unsqueeze(1) * x[b]  # C x C_in x *size, all at once
            output = model(masked)
            scores = torch.stack([targets[b](output[k]).sum() for k in range(len(masked))])
            weights.append(torch.softmax(scores, dim=0))
    weights = torch.stack(weights)
    # Far from uniform weights: the comparisons with the reference are sensitive.
    assert (weights.amax(dim=1) / weights.amin(dim=1)).min() > 1.05
    return weights


def reference_scorecam(
    model, layers, x, targets, reshape_transform=None, eigen_smooth=False
) -> torch.Tensor:
    """Unscaled maps at the input's size, averaged over layers."""
    maps = []
    for output in layer_outputs(model, layers, x):
        activations = output if reshape_transform is None else reshape_transform(output)
        activations = activations.float()
        weights = reference_weights(model, activations, x, targets)
        weighted = weights.view(*weights.shape, *[1] * (activations.ndim - 2)) * activations
        reduced = first_principal_component(weighted) if eigen_smooth else weighted.sum(dim=1)
        maps.append(upsample(torch.relu(reduced), x.shape[2:]))
    return torch.stack(maps).mean(dim=0)


def score_cam(model, layers, x, targets, **kwargs) -> torch.Tensor:
    call = {k: kwargs.pop(k) for k in ("aug_smooth", "eigen_smooth") if k in kwargs}
    cam = ScoreCAM(model, layers, **kwargs)
    return cam(x, targets, scale=False, as_tensor=True, **call)


# --------------------------------------------------------------------- models


def sharp_vit() -> TinyViT:
    model = TinyViT()
    sharp(model.head)
    return model


class Small3dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(2, 6, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(6, 8, 3, stride=2, padding=1),
            nn.ReLU(),
        )
        self.fc = sharp(nn.Linear(8, 4))

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3, 4)))


# --------------------------------------------------------------------- 1. the reference
@pytest.mark.parametrize("batch_size", [1, 3, 32, 100])
def test_small_conv_net_two_layers_matches_reference_for_every_batch_size(batch_size):
    model = seeded(SmallConvNet)
    layers = [model.features[3], model.features[5]]
    x = torch.randn(3, 3, 17, 14, generator=torch.Generator().manual_seed(1))
    expected = reference_scorecam(model, layers, x, TARGETS3)
    got = score_cam(model, layers, x, TARGETS3, batch_size=batch_size)
    close(got, expected)
    # Batch sizes change only how the same masked images are grouped.
    baseline = score_cam(model, layers, x, TARGETS3, batch_size=12)
    torch.testing.assert_close(got, baseline, rtol=1e-6, atol=1e-6)


def test_scaled_output_is_the_reference_scaled_per_image():
    model = seeded(SmallConvNet)
    layer = model.features[3]
    x = torch.randn(3, 3, 17, 14, generator=torch.Generator().manual_seed(1))
    expected = min_max(reference_scorecam(model, [layer], x, TARGETS3))
    got = ScoreCAM(model, [layer], batch_size=5)(x, TARGETS3)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    assert np.allclose(got.reshape(3, -1).max(axis=1), 1.0)


def test_resnet18_matches_reference():
    model = seeded(lambda: torchvision.models.resnet18(weights=None, num_classes=10))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    targets = [ClassifierOutputTarget(4), ClassifierOutputTarget(7)]
    layers = [model.layer3[-1]]  # 256 channels at 2 x 2
    expected = reference_scorecam(model, layers, x, targets)
    close(score_cam(model, layers, x, targets, batch_size=100), expected)


def test_vit_tokens_with_reshape_transform_match_reference():
    model = seeded(sharp_vit)
    reshape = functools.partial(vit_reshape_transform, height=4, width=4)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    layers = [model.blocks[-1].norm1]
    targets = [ClassifierOutputTarget(c) for c in (1, 3, 0)]
    expected = reference_scorecam(model, layers, x, targets, reshape)
    for batch_size in (5, 32):
        got = score_cam(model, layers, x, targets, reshape_transform=reshape, batch_size=batch_size)
        close(got, expected)


def test_3d_volumes_match_reference():
    model = seeded(Small3dNet)
    x = torch.randn(2, 2, 6, 8, 7, generator=torch.Generator().manual_seed(4))
    targets = [ClassifierOutputTarget(2), ClassifierOutputTarget(0)]
    layers = [model.features[3]]
    expected = reference_scorecam(model, layers, x, targets)
    assert expected.shape == (2, 6, 8, 7)
    for batch_size in (1, 3, 32):
        close(score_cam(model, layers, x, targets, batch_size=batch_size), expected)


def test_targets_none_explains_each_images_top_class():
    model = seeded(SmallConvNet)
    # One colour channel per image, and no class bias: not every image has the same top class.
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    x = x * torch.eye(3).view(3, 3, 1, 1) * 4
    with torch.no_grad():
        model.fc.bias.zero_()
        top = model(x).argmax(dim=1).tolist()
    assert len(set(top)) > 1
    layers = [model.features[5]]
    expected = reference_scorecam(model, layers, x, [ClassifierOutputTarget(c) for c in top])
    close(score_cam(model, layers, x, None), expected)


def test_eigen_smooth_is_the_principal_component_of_the_score_weighted_activations():
    model = seeded(SmallConvNet)
    x = torch.randn(2, 3, 14, 14, generator=torch.Generator().manual_seed(6))
    targets = TARGETS3[:2]
    layers = [model.features[3]]
    expected = reference_scorecam(model, layers, x, targets, eigen_smooth=True)
    close(score_cam(model, layers, x, targets, eigen_smooth=True), expected)
    assert not torch.allclose(expected, reference_scorecam(model, layers, x, targets))


def test_aug_smooth_averages_the_reference_over_the_augmentations():
    model = seeded(SmallConvNet)
    x = torch.randn(2, 3, 14, 14, generator=torch.Generator().manual_seed(7))
    targets = TARGETS3[:2]
    layers = [model.features[3]]
    maps = []
    for transformer in default_tta_transforms():
        augmented = reference_scorecam(model, layers, transformer.augment_image(x), targets)
        maps.append(transformer.deaugment_mask(augmented.unsqueeze(1)).squeeze(1))
    expected = torch.stack(maps).mean(dim=0)
    close(score_cam(model, layers, x, targets, aug_smooth=True), expected)


def test_output_selector_is_used_for_the_masked_forwards():
    class TupleOutput(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            logits = self.inner(x)
            return {"aux": -logits, "scores": logits}

    plain = seeded(SmallConvNet)
    wrapped = TupleOutput(plain)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(8))
    targets = TARGETS3[:2]
    expected = reference_scorecam(plain, [plain.features[3]], x, targets)
    got = score_cam(wrapped, [plain.features[3]], x, targets, output_selector="scores")
    close(got, expected)


def test_half_precision_model():
    model = seeded(SmallConvNet)
    x = torch.randn(2, 3, 14, 14, generator=torch.Generator().manual_seed(9))
    targets = TARGETS3[:2]
    expected = score_cam(model, [model.features[3]], x, targets)
    model = model.to(torch.bfloat16)
    got = score_cam(model, [model.features[3]], x.to(torch.bfloat16), targets, batch_size=4)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert np.corrcoef(got.flatten().numpy(), expected.flatten().numpy())[0, 1] > 0.99


# --------------------------------------------------------------------- 2. deduplication
def test_duplicate_and_zero_channels_share_forwards_and_change_nothing():
    model = RowCounter(seeded(DuplicatedChannelsNet))
    layer = model.inner.relu
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(10))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]

    # The construction holds: 5 distinct normalised maps among 16, checked at full size.
    (activations,) = layer_outputs(model.inner, [layer], x)
    for b in range(2):
        masks = min_max(upsample(activations[b], x.shape[2:]))
        assert torch.unique(masks, dim=0).shape[0] == DuplicatedChannelsNet.distinct
        assert (masks[9:16] == 0).all() and (masks[:4].amax(dim=(1, 2)) == 1).all()

    expected = reference_scorecam(model.inner, [layer], x, targets)
    model.rows.clear()
    got = score_cam(model, [layer], x, targets, batch_size=2)
    close(got, expected)
    # One plain forward of the 2 images, then 5 masked images per image in chunks of 2.
    assert model.rows == [2, 2, 2, 1, 2, 2, 1]
    assert sum(model.rows[1:]) == 2 * DuplicatedChannelsNet.distinct  # not 2 x 16
    # The masked forwards run in inference mode (no autograd graph), the first does not.
    assert model.inference == [False] + [True] * 6


def test_duplicate_channels_get_equal_weights():
    model = seeded(DuplicatedChannelsNet)
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(11))
    cam = ScoreCAM(model, [model.relu])
    captured = {}
    original = cam.layer_weights

    def spy(activations, gradients, context):
        weights = original(activations, gradients, context)
        captured["weights"] = weights.flatten()
        return weights

    cam.layer_weights = spy
    cam(x, [ClassifierOutputTarget(3)])
    w = captured["weights"]
    assert torch.isclose(w.sum(), torch.tensor(1.0))
    assert torch.equal(w[4:7], w[0:3]) and w[7] == w[3] and w[8] == w[0]
    assert (w[9:16] == w[9]).all() and not torch.equal(w[0], w[9])
    (activations,) = layer_outputs(model, [model.relu], x)
    torch.testing.assert_close(
        w, reference_weights(model, activations, x, [ClassifierOutputTarget(3)])[0]
    )


# --------------------------------------------------------------------- 3. memory


def peak_bytes(channels: int, batch_size: int) -> tuple[int, int]:
    model = RowCounter(seeded(lambda: WideNet(channels)))
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(12))
    cam = ScoreCAM(model, [model.inner.conv], batch_size=batch_size)
    with PeakTensorBytes() as tracker:
        cam(x, [ClassifierOutputTarget(0)], as_tensor=True)
    assert sum(model.rows[1:]) == channels  # every channel distinct: no dedup help here
    return tracker.peak, tracker.live


def test_peak_memory_grows_with_batch_size_not_with_channels():
    image_bytes = 3 * 64 * 64 * 4
    all_masked = 512 * image_bytes  # what materialising every masked input would take
    peaks = {}
    for channels, batch_size in [(512, 4), (512, 8), (512, 32), (64, 8)]:
        peaks[channels, batch_size], live = peak_bytes(channels, batch_size)
        assert live < image_bytes  # everything allocated during the call was released
    assert peaks[512, 8] < all_masked / 10
    # Growing the batch by 28 images costs at least 28 masked images more ...
    assert peaks[512, 32] - peaks[512, 4] > 28 * image_bytes
    assert peaks[512, 4] < peaks[512, 8] < peaks[512, 32] < all_masked / 2
    # ... while 448 more channels cost far less than one masked image per channel (and most
    # of the difference is the wider model's own activations).
    assert abs(peaks[512, 8] - peaks[64, 8]) < 448 * image_bytes / 20


def test_the_tracker_sees_a_materialised_set_of_masked_inputs():
    x = torch.randn(1, 3, 128, 128)
    with PeakTensorBytes() as tracker:
        masks = torch.rand(64, 128, 128)
        masked = masks.unsqueeze(1) * x[0]
        del masked, masks
    assert tracker.peak == 64 * 128 * 128 * 4 * 4  # masks + 64 masked images
    assert tracker.live == 0


# --------------------------------------------------------------------- 4. model state
def test_model_state_is_unchanged():
    model = resnet_in_training_mode()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(13))
    targets = [ClassifierOutputTarget(3), ClassifierOutputTarget(5)]
    before = snapshot(model)
    maps = ScoreCAM(model, [model.layer3[-1]])(x, targets)
    assert_same_state(before, snapshot(model))
    assert np.isfinite(maps).all() and maps.max() == 1.0


def test_model_state_is_unchanged_when_a_target_raises_during_the_masked_forwards():
    model = resnet_in_training_mode()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(13))
    calls = []

    def raises_on_third_call(output):
        calls.append(output.shape)
        if len(calls) == 3:  # calls 1-2 score the two plain images
            raise KeyError("raised by the user's target")
        return output[..., 1]

    before = snapshot(model)
    with pytest.raises(KeyError, match="user's target"):
        ScoreCAM(model, [model.layer3[-1]])(x, [raises_on_third_call] * 2)
    assert len(calls) == 3
    assert_same_state(before, snapshot(model))


# --------------------------------------------------------------------- 5. batch size, bar
def test_batch_size_set_after_construction_is_used():
    model = RowCounter(seeded(SmallConvNet))
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(14))
    cam = ScoreCAM(model, [model.inner.features[0]])  # 8 channels
    assert cam.batch_size == 32 and cam.progress_bar is False
    first = cam(x, [ClassifierOutputTarget(0)], as_tensor=True)
    assert model.rows == [1, 8]
    model.rows.clear()
    cam.batch_size = 3
    second = cam(x, [ClassifierOutputTarget(0)], as_tensor=True)
    assert model.rows == [1, 3, 3, 2]
    torch.testing.assert_close(first, second, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True, "8", None])
def test_invalid_batch_size_raises_a_value_error(bad):
    model = seeded(SmallConvNet)
    with pytest.raises(ValueError, match="batch_size"):
        ScoreCAM(model, [model.features[3]], batch_size=bad)
    cam = ScoreCAM(model, [model.features[3]])
    cam.batch_size = bad
    with pytest.raises(ValueError, match="batch_size"):
        cam(torch.randn(1, 3, 8, 8), [ClassifierOutputTarget(0)])


def test_numpy_integer_batch_size_is_accepted():
    model = seeded(SmallConvNet)
    cam = ScoreCAM(model, [model.features[3]], batch_size=np.int64(4))
    assert cam.batch_size == 4 and type(cam.batch_size) is int


def test_progress_bar_only_when_asked(capsys):
    model = seeded(DuplicatedChannelsNet)
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(10))
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    quiet = ScoreCAM(model, [model.relu], batch_size=2)(x, targets)
    assert capsys.readouterr().err == ""
    shown = ScoreCAM(model, [model.relu], batch_size=2, progress_bar=True)(x, targets)
    err = capsys.readouterr().err
    assert "ScoreCAM" in err and "100%" in err and "6/6" in err  # 3 passes per image
    np.testing.assert_array_equal(quiet, shown)


def test_layer_with_fewer_spatial_axes_than_the_input_is_a_clear_error():
    model = seeded(Small3dNet)
    squash = lambda t: t.mean(dim=2)  # noqa: E731 - 2-D maps for a 3-D input
    with pytest.raises(ValueError, match="spatial axes"):
        ScoreCAM(model, [model.features[3]], reshape_transform=squash)(
            torch.randn(1, 2, 4, 4, 4), [ClassifierOutputTarget(0)]
        )


# --------------------------------------------------------------------- 6. host syncs


def test_the_scalar_read_counter_sees_reads_in_every_mode():
    scores, category = torch.randn(5, 10), torch.tensor(3)
    for mode in (torch.enable_grad, torch.no_grad, torch.inference_mode):
        with mode(), CountScalarReads() as reads:
            for row in scores:
                row[category]  # plain indexing with a 0-d tensor reads it back
            bool(scores[0, 0] > 0)
            scores[0, 1].item()
        assert reads.count >= 7, mode
        # ClassifierOutputTarget gathers a 0-d tensor category on the device instead.
        with mode(), CountScalarReads() as reads:
            picked = torch.stack([ClassifierOutputTarget(category)(row) for row in scores])
        assert reads.count == 0, mode
        torch.testing.assert_close(picked, scores[:, 3])


@pytest.mark.parametrize("given_targets", [True, False])
def test_no_host_sync_per_output_or_per_chunk(monkeypatch, given_targets):
    model = RowCounter(seeded(SmallConvNet))
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(15))
    # targets=None: each image's top class, a ClassifierOutputTarget of a 0-d tensor.
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)] if given_targets else None
    python_reads = []
    for name in ("tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kwargs):
            python_reads.append(self.shape)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    counts = {}
    for batch_size in (1, 64):
        model.rows.clear()
        with CountScalarReads() as reads:
            score_cam(model, [model.inner.features[5]], x, targets, batch_size=batch_size)
        counts[batch_size] = (reads.count, len(model.rows))
    reads_1, forwards_1 = counts[1]
    reads_64, forwards_64 = counts[64]
    assert forwards_64 == 1 + 2 and forwards_1 > 1 + 2 * 12  # (a few channels are all zero)
    # BaseCAM's input check, and with targets=None the plain forward's scoring and one
    # read of each image's class; nothing per chunk or per masked image.
    assert reads_1 == reads_64 <= (1 if given_targets else 1 + 2 + 2)
    assert python_reads == []
