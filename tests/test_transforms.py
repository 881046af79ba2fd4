import numpy as np
import pytest
import torch
import torch.nn.functional as F
from reference_resize import official_resize_and_crop
from scipy import ndimage

from rmi.data.transforms import (
    PadGeometry,
    cell_grid,
    resize_and_crop,
    resize_and_pad_image,
    resize_and_pad_mask,
    resize_bilinear,
    unpad_and_resize,
    upsample_logits,
)

SQUARE = np.ones((3, 3), bool)  # 8-connected: a one-pixel shift may be diagonal


def test_geometry_matches_official_formula():
    g = PadGeometry.of(100, 200, 320)  # scale 1.6 -> 160 x 320, padded top/bottom
    assert (g.new_height, g.new_width, g.top, g.left) == (160, 320, 80, 0)
    g = PadGeometry.of(427, 640, 320)  # COCO-like: scale 0.5 -> 213.5 rounds to 214 (half to even)
    assert (g.new_height, g.new_width, g.top, g.left) == (214, 320, 53, 0)
    g = PadGeometry.of(640, 480, 320)
    assert (g.new_height, g.new_width, g.top, g.left) == (320, 240, 0, 40)
    with pytest.raises(ValueError):
        PadGeometry.of(0, 5, 320)


def test_image_pad_is_zero_and_grey_becomes_rgb(rng):
    img = rng.integers(1, 255, size=(30, 60), dtype=np.uint8)
    out = resize_and_pad_image(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    g = PadGeometry.of(30, 60, 64)
    inside = np.zeros((64, 64), bool)
    inside[g.box] = True
    assert (out[~inside] == 0).all()
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_mask_round_trip_exact_for_nearest():
    mask = np.zeros((16, 32), bool)
    mask[3:9, 5:20] = True
    padded = resize_and_pad_mask(mask, 64, mode="nearest")  # scale exactly 2
    assert padded.sum() == 4 * mask.sum()
    back = unpad_and_resize(padded, 16, 32, mode="nearest")
    assert back.dtype == bool and np.array_equal(back, mask)
    # the official bilinear rule grows the boundary by at most one pixel
    official = unpad_and_resize(resize_and_pad_mask(mask, 64), 16, 32, mode="nearest")
    assert (mask <= official).all() and (official <= ndimage.binary_dilation(mask, structure=SQUARE)).all()
    with pytest.raises(ValueError):
        resize_and_pad_mask(mask, 64, mode="area")


@pytest.mark.parametrize("hw", [(37, 53), (120, 45), (333, 500)])
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_mask_round_trip_within_one_boundary_pixel(hw, mode):
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 3) ** 2 / (w / 4) ** 2 < 1
    back = unpad_and_resize(resize_and_pad_mask(mask, 96, mode=mode), h, w, mode="nearest")
    scale = max(h, w) / 96  # one pixel of the padded grid, in original pixels
    r = int(np.ceil(scale)) + 1
    grown = ndimage.binary_dilation(mask, structure=SQUARE, iterations=r)
    shrunk = ndimage.binary_erosion(mask, structure=SQUARE, iterations=r)
    assert (back <= grown).all() and (shrunk <= back).all()
    assert abs(int(back.sum()) - int(mask.sum())) / mask.sum() < 0.15


def test_bilinear_inverse_of_a_constant_map_is_constant():
    padded = np.full((64, 64), 0.25, np.float32)
    back = unpad_and_resize(padded, 20, 50, mode="bilinear")
    assert back.shape == (20, 50) and np.allclose(back, 0.25)
    with pytest.raises(ValueError):
        unpad_and_resize(padded, 20, 50, mode="cubic")


def test_resize_and_crop_by_hand():
    """One foreground pixel of an 8 x 8 map back to 12 x 16, as ``util/im_processing.resize_and_crop``.

    scale = max(12/8, 16/8) = 2: the whole map is resized to R = 16, then rows 2..13 and columns
    0..15 are cut out. Output pixel i reads input coordinate (i + 0.5) / 2 - 0.5 = i/2 - 0.25, so
    i = 2k reads rows k-1 and k (weights 1/4, 3/4), i = 2k+1 rows k and k+1 (3/4, 1/4). Input row 2
    is read by resized rows 3, 4, 5, 6 (crop: 1..4), input column 5 by columns 9..12. Every pixel
    > 0 counts, even the corners of weight 1/4 x 1/4: a 4 x 4 block, where nearest neighbour on
    the content box would give 2 x 2.
    """
    binary = np.zeros((8, 8), bool)
    binary[2, 5] = True
    expected = np.zeros((12, 16), bool)
    expected[1:5, 9:13] = True
    np.testing.assert_array_equal(resize_and_crop(binary, 12, 16), expected)
    nearest = np.zeros((12, 16), bool)
    nearest[2:4, 10:12] = True
    np.testing.assert_array_equal(unpad_and_resize(binary, 12, 16, mode="nearest"), nearest)
    # downscale: 8 x 8 -> R = 4 (scale 1/2), each output pixel reads input 2i + 0.5: rows 2i, 2i+1
    np.testing.assert_array_equal(resize_and_crop(binary, 4, 3), [[0, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError):
        resize_and_crop(np.zeros((8, 6), bool), 12, 16)


@pytest.mark.parametrize("hw", [(480, 640), (427, 640), (640, 427), (375, 500), (320, 213), (333, 500), (700, 960)])
def test_resize_and_crop_equals_skimage_0_13_port(hw, rng):
    """scikit-image 0.26 reproduces the 2017 skimage 0.13 resize that the official evaluation ran."""
    h, w = hw
    yy, xx = np.mgrid[:320, :320]
    blob = (yy - 150) ** 2 + (xx - 170) ** 2 < 90**2
    for binary in (blob, rng.random((320, 320)) < 0.3):
        official = official_resize_and_crop(binary.astype(np.float32), h, w)
        assert official.shape == (h, w)
        np.testing.assert_array_equal(resize_and_crop(binary, h, w), official > 0)


def test_cell_grid_samples_every_eighth_pixel():
    m = np.arange(64 * 64).reshape(64, 64)
    g = cell_grid(m)
    assert g.shape == (8, 8) and g[2, 3] == m[16, 24]
    assert torch.equal(cell_grid(torch.as_tensor(m))[1:, 1], torch.as_tensor(m[8::8, 8]))


def test_upsample_logits_shape_and_constant():
    up = upsample_logits(np.full((2, 5, 5), 3.0), 40)
    assert up.shape == (2, 40, 40) and up.dtype == np.float32 and np.allclose(up, 3.0)


def test_upsample_logits_is_tf1_bilinear_aligned_with_the_cell_grid(rng):
    """Pixel (8i, 8j) gets cell (i, j) exactly (what the training target mask[8i, 8j] taught);
    pixels in between interpolate linearly; the last 7 rows/columns hold the border value."""
    low5 = rng.standard_normal((2, 5, 5)).astype(np.float32)
    up = upsample_logits(low5, 40)
    np.testing.assert_allclose(cell_grid(up), low5, atol=1e-6)
    np.testing.assert_allclose(up[:, 4, 0], (low5[:, 0, 0] * 4 + low5[:, 1, 0] * 4) / 8, atol=1e-6)
    np.testing.assert_allclose(up[:, 2, 8], (6 * low5[:, 0, 1] + 2 * low5[:, 1, 1]) / 8, atol=1e-6)
    np.testing.assert_allclose(up[:, 39, 39], low5[:, 4, 4], atol=1e-6)
    # a mask on the cell grid comes back as itself at the grid points
    mask = (rng.random((8, 8)) > 0.5) * 2.0 - 1
    np.testing.assert_array_equal(cell_grid(upsample_logits(mask, 64)) > 0, mask > 0)


def _disk_or_dots(rng, h: int, w: int, k: int) -> np.ndarray:
    if k % 3 == 0:
        return rng.random((h, w)) < 0.01
    yy, xx = np.mgrid[:h, :w]
    return (yy - rng.uniform(0, h)) ** 2 + (xx - rng.uniform(0, w)) ** 2 < rng.uniform(1, 150) ** 2


def test_numpy_resizes_equal_torch_interpolate(rng):
    """The NumPy resizes (no torch in evaluation) give PyTorch's ``interpolate`` results: the same
    foreground after ``> 0`` (bilinear, ``align_corners=False``) and the same pixels (nearest)."""
    for k in range(400):
        h, w, out_h, out_w = (int(v) for v in rng.integers(2, 400, 4))
        mask = _disk_or_dots(rng, h, w, k).astype(np.float32)
        t = torch.from_numpy(mask)[None, None]
        bilinear = F.interpolate(t, size=(out_h, out_w), mode="bilinear", align_corners=False)[0, 0].numpy()
        ours = resize_bilinear(mask, out_h, out_w)
        np.testing.assert_array_equal(ours > 0, bilinear > 0)
        np.testing.assert_allclose(ours, bilinear, atol=1e-5)
        size = max(out_h, out_w)
        geo = PadGeometry.of(h, w, size)
        np.testing.assert_array_equal(
            resize_and_pad_mask(mask > 0, size, mode="nearest")[geo.box],
            F.interpolate(t, size=(geo.new_height, geo.new_width), mode="nearest")[0, 0].numpy() > 0,
        )
