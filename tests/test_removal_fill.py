"""A removal's pasted parts refilled at the scan's own levels (Poisson image editing)."""
import numpy as np
import pytest
import torch

from xcounter.errors import ModelError
from xcounter.methods.trajectory import TrajectoryMethod
from xcounter.removal_fill import poisson_fill

SIDE = 24


def ramp(channels: int = 3) -> np.ndarray:
    """A smooth scan: brightness rising left to right, a different slope per channel."""
    x = np.linspace(0.2, 0.6, SIDE)
    return np.stack([np.tile(x * (1 + 0.2 * c), (SIDE, 1)) for c in range(channels)], axis=-1)


def square(top: int = 6, left: int = 6, size: int = 10) -> np.ndarray:
    region = np.zeros((SIDE, SIDE), dtype=bool)
    region[top:top + size, left:left + size] = True
    return region


def test_a_refill_too_bright_gets_the_scans_level_and_keeps_its_texture():
    """The generator's fill is the scan plus a constant 0.3 (too pale) plus a texture that vanishes at the region's
    edge: the refill keeps the texture and drops the offset, and leaves everything outside the region alone."""
    scan, region = ramp(), square()
    texture = np.zeros_like(scan)
    texture[8:14, 8:14] = 0.1 * np.sin(np.arange(6))[None, :, None]
    drawn = scan + 0.3 * region[..., None] + texture
    filled = poisson_fill(scan, drawn, region)
    # the offset is gone; what is left is the scan's own slope across the region's edge (0.017 to 0.021 per
    # pixel), which is not carried over either
    assert np.abs(filled - (scan + texture)).max() < 0.03
    assert np.array_equal(filled[~region], scan[~region])
    assert np.abs(drawn - (scan + texture)).max() == pytest.approx(0.3)  # what plain pasting would have shown


def test_a_strip_along_the_images_edge_takes_its_level_from_the_side_that_is_scan():
    """A ruler lies along the frame: the image's edge gives no value (Neumann), the scan beside the strip does."""
    scan = ramp()
    region = np.zeros((SIDE, SIDE), dtype=bool)
    region[:, -5:] = True
    filled = poisson_fill(scan, scan + 0.25 * region[..., None], region)
    assert np.abs(filled - scan).max() < 0.03  # the offset gone, the scan's slope kept inside the strip
    flat = np.full_like(scan, 0.4)
    assert np.abs(poisson_fill(flat, flat + 0.25 * region[..., None], region) - flat).max() < 1e-9


def test_grey_scans_nothing_to_fill_and_nothing_to_anchor_to():
    scan = ramp(1)[..., 0]
    drawn = scan + 0.2
    assert np.array_equal(poisson_fill(scan, drawn, np.zeros((SIDE, SIDE), dtype=bool)), scan)
    filled = poisson_fill(scan, drawn, square())
    assert filled.shape == scan.shape and np.abs(filled - scan).max() < 0.03
    everywhere = np.ones((SIDE, SIDE), dtype=bool)  # no boundary: the drawn image is all there is
    assert np.allclose(poisson_fill(scan, drawn, everywhere), drawn)
    with pytest.raises(ValueError, match="shapes differ"):
        poisson_fill(scan, drawn[:-1], square())


class Brightness:
    """A 'classifier' whose margin is the region's mean brightness above 0.5, times 20 (positive = yes)."""

    def margins(self, images: torch.Tensor) -> torch.Tensor:
        return ((images[..., 6:16, 6:16].mean(dim=(1, 2, 3)) - 0.5) * 20)[:, None]


def _as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]


def test_the_refill_is_shown_only_while_the_decision_stays_flipped():
    """The decision was positive (bright square); the removal darkened it. Refilled at the scan's levels, a flat
    darkening is undone and the decision comes back, so the pasted removal stays what is shown (None); a removal
    that works through its texture (a dark core the scan's level does not undo) is shown refilled."""
    scan = np.full((SIDE, SIDE, 3), 0.8)
    flat = scan - 0.5 * square()[..., None]
    assert TrajectoryMethod._filled(_as_tensor(scan), _as_tensor(flat), square().astype(float), Brightness(), 0,
                                    reference_positive=True, flip_margin=1.0) is None
    core = scan.copy()
    core[7:15, 7:15] = 0.0  # a dark core inside the region, scan-coloured at its edge
    shown = TrajectoryMethod._filled(_as_tensor(scan), _as_tensor(core), square().astype(float), Brightness(), 0,
                                     reference_positive=True, flip_margin=1.0)
    assert shown is not None
    image, margin = shown
    assert margin < -1.0 and image.shape == (1, 3, SIDE, SIDE)
    assert torch.allclose(image, _as_tensor(core), atol=1e-5)  # already at the scan's level: nothing to refill


def test_a_generator_folder_says_whether_it_refills_removals(tmp_path):
    from tiny_generator import tiny_generator_dir
    from xcounter.generators import load_generator

    own = load_generator(tiny_generator_dir(tmp_path / "own", settings={"steps": 2, "fill_removals": True}))
    assert own.fill_removals and own.identity()["fill_removals"] is True
    plain = load_generator(tiny_generator_dir(tmp_path / "plain", settings={"steps": 2}))
    assert not plain.fill_removals and "fill_removals" not in plain.identity()
    with pytest.raises(ModelError, match="xcounter.json: fill_removals must be true or false"):
        load_generator(tiny_generator_dir(tmp_path / "bad", settings={"fill_removals": "yes"}))


def test_the_shipped_skin_generator_refills_its_removals():
    from xcounter.generators import load_generator

    assert load_generator("phantom-skin").fill_removals
    assert not load_generator("phantom-cxr").fill_removals
