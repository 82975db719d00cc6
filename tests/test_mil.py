import numpy as np
import pytest
import torch
import torchvision

from deemd.grid import PatchGrid
from deemd.mil import (
    adapt_conv1_weight,
    build_resnet34,
    class_weights,
    dihedral_transform,
    extract_patches,
    kth_largest,
    normalise,
    random_dihedral_codes,
    random_intensity_gains,
    scale_intensities,
    topk_patch_indices,
    weighted_bce,
)


def test_extract_patches_matches_slicing():
    sites = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    grid = PatchGrid(16, 8, 4)
    patches = extract_patches(sites, grid)
    assert patches.shape == (2, 9, 3, 8, 8)
    for b in range(2):
        for i in range(3):
            for j in range(3):
                expected = sites[b, :, 4 * i : 4 * i + 8, 4 * j : 4 * j + 8]
                assert torch.equal(patches[b, 3 * i + j], expected)


def test_adapt_conv1_weight_keeps_response_to_grey_input():
    weight = torch.randn(64, 3, 7, 7)
    adapted = adapt_conv1_weight(weight, 5)
    assert adapted.shape == (64, 5, 7, 7)
    grey3, grey5 = torch.ones(1, 3, 7, 7), torch.ones(1, 5, 7, 7)
    response3 = torch.nn.functional.conv2d(grey3, weight)
    response5 = torch.nn.functional.conv2d(grey5, adapted)
    assert torch.allclose(response3, response5, atol=1e-4)


def test_build_resnet34_five_channels_one_logit(tmp_path):
    torch.manual_seed(0)
    model = build_resnet34(5)
    assert model.conv1.in_channels == 5 and model.fc.out_features == 1
    assert model(torch.randn(2, 5, 32, 32)).shape == (2, 1)
    # ImageNet-style weights from a local file: adapted conv1, the rest loaded as is.
    imagenet = torchvision.models.resnet34(weights=None).state_dict()
    path = tmp_path / "resnet34.pth"
    torch.save(imagenet, path)
    loaded = build_resnet34(5, str(path))
    assert torch.allclose(loaded.conv1.weight, adapt_conv1_weight(imagenet["conv1.weight"], 5))
    assert torch.equal(loaded.layer3[0].conv1.weight, imagenet["layer3.0.conv1.weight"])
    torch.save({"something": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth: not a torchvision ResNet34"):
        build_resnet34(5, str(tmp_path / "bad.pth"))


def test_whole_site_logit_is_the_site_mean_of_its_class_activation_map():
    """W's inhibition readout (docs/method.md §10): the network averages its last feature
    maps over the site before one linear layer, so its logit is the mean over positions of
    that layer applied at each position (the class activation map)."""
    torch.manual_seed(0)
    model = build_resnet34(2).eval()
    sites = torch.randn(3, 2, 96, 96)
    with torch.no_grad():
        trunk = torch.nn.Sequential(*list(model.children())[:-2])
        features = trunk(sites)  # (3, 512, 3, 3)
        activation_map = torch.einsum("bchw,c->bhw", features, model.fc.weight[0]) + model.fc.bias[0]
        torch.testing.assert_close(model(sites)[:, 0], activation_map.mean(dim=(1, 2)), rtol=1e-5, atol=1e-5)


def test_normalise_per_channel():
    sites = torch.full((1, 2, 2, 2), 10, dtype=torch.uint8)
    out = normalise(sites, torch.tensor([10.0, 0.0]), torch.tensor([1.0, 5.0]))
    assert torch.equal(out[0, 0], torch.zeros(2, 2)) and torch.equal(out[0, 1], torch.full((2, 2), 2.0))


def test_topk_and_kth_largest():
    probabilities = torch.tensor([[0.1, 0.9, 0.5, 0.7], [0.3, 0.2, 0.1, 0.0]])
    assert topk_patch_indices(probabilities, 2).tolist() == [[1, 3], [0, 1]]
    assert torch.allclose(kth_largest(probabilities, 2), torch.tensor([0.7, 0.2]))
    assert np.allclose(kth_largest(probabilities.numpy(), 2), [0.7, 0.2])
    assert np.allclose(kth_largest(probabilities.numpy(), 9), [0.1, 0.0])


def test_class_weights_balance_the_classes():
    weights = class_weights(np.array([0, 0, 0, 1]))
    assert np.allclose(weights, [4 / 6, 2.0])
    with pytest.raises(ValueError, match="both classes"):
        class_weights(np.array([1, 1]))


def test_weighted_bce():
    logits = torch.tensor([0.0, 0.0, 2.0])
    targets = torch.tensor([0.0, 1.0, 1.0])
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    value = weighted_bce(logits, targets, torch.tensor([1.0, 3.0]))
    assert torch.isclose(value, (plain * torch.tensor([1.0, 3.0, 3.0])).mean())


def test_dihedral_transform_gives_the_eight_symmetries_of_the_square():
    image = torch.arange(2 * 3 * 3, dtype=torch.float32).view(1, 2, 3, 3)
    images = image.expand(8, -1, -1, -1)
    out = dihedral_transform(images, torch.arange(8))
    # every code is a distinct symmetry, and code 0 is the identity
    assert len({tuple(o.flatten().tolist()) for o in out}) == 8
    assert torch.equal(out[0], image[0])
    assert torch.equal(out[1], torch.rot90(image[0], 1, dims=(-2, -1)))
    assert torch.equal(out[4], image[0].flip(-1))
    assert torch.equal(out[6], torch.rot90(image[0].flip(-1), 2, dims=(-2, -1)))
    # channels move together, and the input is left alone
    assert torch.equal(out[:, 1] - out[:, 0], torch.full((8, 3, 3), 9.0))
    assert torch.equal(images[3], image[0])


def test_scale_intensities_equals_standardising_rescaled_raw_images():
    raw = torch.randint(0, 256, (3, 4, 5, 5), dtype=torch.uint8)
    mean, std = torch.tensor([10.0, 40.0, 80.0, 5.0]), torch.tensor([3.0, 12.0, 30.0, 2.0])
    gains = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.8, 1.2, 1.0, 0.5], [1.1, 0.9, 1.3, 1.0]])
    scaled = scale_intensities(normalise(raw, mean, std), gains, mean, std)
    expected = (raw.float() * gains[:, :, None, None] - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    torch.testing.assert_close(scaled, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scaled[0], normalise(raw, mean, std)[0])  # gain 1 changes nothing
    with pytest.raises(ValueError, match="gains"):
        scale_intensities(normalise(raw, mean, std), gains[:2], mean, std)


def test_random_intensity_gains_are_log_uniform_within_the_jitter():
    gains = random_intensity_gains(4000, 5, 0.25, torch.Generator().manual_seed(1))
    assert gains.shape == (4000, 5)
    assert gains.min() >= 1 / 1.25 - 1e-6 and gains.max() <= 1.25 + 1e-6
    assert gains.min() < 0.81 and gains.max() > 1.24  # the whole range is drawn
    assert abs(float(torch.log(gains).mean())) < 0.01  # as often dimmer as brighter
    again = random_intensity_gains(4000, 5, 0.25, torch.Generator().manual_seed(1))
    assert torch.equal(gains, again)
    assert torch.equal(random_intensity_gains(3, 2, 0.0, torch.Generator()), torch.ones(3, 2))
    with pytest.raises(ValueError, match="jitter"):
        random_intensity_gains(3, 2, -0.1, torch.Generator())


def test_dihedral_transform_checks_its_input():
    with pytest.raises(ValueError, match="square"):
        dihedral_transform(torch.zeros(2, 1, 3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="3 transform codes for 2 images"):
        dihedral_transform(torch.zeros(2, 1, 3, 3), torch.zeros(3, dtype=torch.long))


def test_random_dihedral_codes_are_seeded_and_cover_all_eight():
    a = random_dihedral_codes(400, torch.Generator().manual_seed(3))
    b = random_dihedral_codes(400, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert set(a.tolist()) == set(range(8))
