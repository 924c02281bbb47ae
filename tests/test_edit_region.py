"""DiffEdit-style edit regions: the mask rule, region-confined sampling, and the trajectory's NFE accounting."""
from __future__ import annotations

import pytest
import torch

from tiny_generator import tiny_pipeline
from xcounter.disentangle.edit_region import (DEFAULT_PROBE_STRENGTHS, disagreement_map, edit_region, prior_region,
                                              probe_steps, region_from_map)
from xcounter.errors import XCounterError
from xcounter.generators import SDGenerator, SwapSchedule
from xcounter.search import build_trajectory

torch.set_num_threads(1)
STEPS = 6


@pytest.fixture(scope="module")
def generator() -> SDGenerator:
    return SDGenerator(tiny_pipeline(1), steps=STEPS)


@pytest.fixture(scope="module")
def setup(generator):
    z_T = torch.randn(1, *generator.latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        source, edited = generator.embed(["no pleural effusion", "large right pleural effusion"])
    return z_T, source, edited, generator.denoise_prefix(z_T, source, STEPS)


def test_region_from_map_follows_diffedits_threshold_and_grows():
    disagreement = torch.zeros(8, 8)
    disagreement[3, 4] = 10.0  # mean 10/64: clamp at 3x mean = 0.47, the hot pixel is far above half of it
    disagreement[0, 0] = 0.1  # below half the clamp: outside
    region = region_from_map(disagreement, ratio=3.0, grow=0)
    assert region.shape == (1, 1, 8, 8) and region.sum() == 1 and region[0, 0, 3, 4] == 1
    grown = region_from_map(disagreement, ratio=3.0, grow=1)
    assert grown.sum() == 9 and grown[0, 0, 2:5, 3:6].eq(1).all()
    assert region_from_map(torch.zeros(8, 8)).sum() == 0  # an edit the denoiser ignores changes nothing


def test_probe_steps_stay_inside_the_schedule():
    assert probe_steps(20) == [5, 10, 15]
    assert probe_steps(2, (0.0, 0.5, 1.0)) == [0, 1]


def test_disagreement_is_zero_for_the_unedited_prompt(generator, setup):
    _, source, edited, prefix = setup
    assert disagreement_map(generator, prefix, source, source).abs().max() == 0
    changed = disagreement_map(generator, prefix, source, edited)
    assert changed.shape == generator.latent_shape[1:] and changed.max() > 0


def test_sampling_outside_the_region_is_the_source_path(generator, setup):
    z_T, source, edited, prefix = setup
    region = torch.zeros(1, 1, *generator.latent_shape[1:])
    region[..., :4, :] = 1  # the edit may act in the top half only
    free, confined, nowhere = generator.sample(z_T, [SwapSchedule(source, edited, 0),
                                                     SwapSchedule(source, edited, 0, region=region),
                                                     SwapSchedule(source, edited, 0, region=torch.zeros_like(region))],
                                               prefix=prefix)
    reconstruction = prefix[-1][0]
    assert torch.allclose(nowhere, reconstruction, atol=1e-6)
    assert torch.allclose(confined[:, 4:], reconstruction[:, 4:], atol=1e-6)
    assert not torch.allclose(confined[:, :4], reconstruction[:, :4], atol=1e-4)
    assert not torch.allclose(free[:, 4:], reconstruction[:, 4:], atol=1e-4)  # unconfined edits act everywhere


def test_a_region_of_the_wrong_size_is_refused(generator, setup):
    z_T, source, edited, prefix = setup
    with pytest.raises(XCounterError, match="latent-sized"):
        generator.sample(z_T, [SwapSchedule(source, edited, 0, region=torch.ones(1, 1, 3, 3))], prefix=prefix)


def test_localised_trajectory_keeps_the_rest_and_counts_the_probes(generator, setup):
    z_T, source, edited, prefix = setup
    direction = edited - source
    common = dict(attribute="pleural_effusion", sign="add", alpha=1.0, swap_steps=[3, 0], edit_guidance=2.0)
    plain = build_trajectory(generator, z_T, prefix, source, direction, **common)
    local = build_trajectory(generator, z_T, prefix, source, direction, localise=True, **common)
    probes = 2 * len(probe_steps(STEPS, DEFAULT_PROBE_STRENGTHS))
    assert plain.region is None and local.nfe == plain.nfe + probes
    region = edit_region(generator, prefix, source, source + direction)
    assert torch.equal(local.region, region) and 0 < region.mean() < 1
    outside = region[0].expand_as(local.points[0]) == 0
    assert torch.allclose(local.points[1:][:, outside], local.points[0][outside].expand(2, -1), atol=1e-6)
    assert torch.equal(local.points[0], plain.points[0])


def test_prior_region_is_the_outer_band():
    assert prior_region("anywhere", (1, 4, 16, 16)) is None
    band = prior_region("periphery", (1, 4, 16, 16))
    assert band.shape == (1, 1, 16, 16)
    assert band[0, 0, 0].all() and band[0, 0, :, -1].all() and band[0, 0, 8, 8] == 0
    assert band[0, 0, 4:12, 4:12].sum() == 0 and band[0, 0, 3, 8] == 1  # ceil(0.2 * 16) = 4 rows each side
    top = prior_region("top", (1, 4, 16, 16))
    assert top[0, 0, :3].all() and top[0, 0, 3:].sum() == 0  # ceil(0.15 * 16) = 3 rows, the top edge only
    with pytest.raises(ValueError, match="unknown where"):
        prior_region("centre", (16, 16))


def test_prior_region_box_covers_every_latent_cell_the_box_touches():
    trachea = prior_region((0.0, 0.3, 0.38, 0.62), (1, 4, 16, 16))[0, 0]
    assert trachea[:5, 6:10].all() and trachea.sum() == 5 * 4  # rows 0..ceil(4.8), cols floor(6.08)..ceil(9.92)
    thin = prior_region((0.5, 0.5001, 0.5, 0.5001), (1, 4, 16, 16))[0, 0]
    assert thin.sum() == 1 and thin[8, 8] == 1  # a box thinner than a cell still edits the cell it is in


def test_a_periphery_prior_confines_additions_and_cuts_the_mask(generator, setup):
    """An addition (no DiffEdit mask) acts only in the outer band; a localised edit acts where both allow."""
    z_T, source, edited, prefix = setup
    direction = edited - source
    common = dict(attribute="portable_label", sign="add", alpha=1.0, swap_steps=[3, 0], edit_guidance=2.0)
    prior = prior_region("periphery", prefix[-1].shape)
    added = build_trajectory(generator, z_T, prefix, source, direction, prior=prior, **common)
    assert torch.equal(added.region, prior)
    centre = prior[0].expand_as(added.points[0]) == 0
    assert torch.allclose(added.points[1:][:, centre], added.points[0][centre].expand(2, -1), atol=1e-6)
    assert not torch.allclose(added.points[-1], added.points[0], atol=1e-4)  # it does edit the band
    both = build_trajectory(generator, z_T, prefix, source, direction, prior=prior, localise=True, **common)
    mask = edit_region(generator, prefix, source, source + direction)
    assert torch.equal(both.region, mask * prior)


def test_attribute_files_name_where_an_attribute_can_be(tmp_path):
    from xcounter.attributes import load_attributes

    assert load_attributes("cxr")["portable_label"].where == "top"
    assert load_attributes("cxr")["nodule"].where == "anywhere"
    assert load_attributes("skin")["ruler"].where == "periphery"
    bad = tmp_path / "bad.yaml"
    bad.write_text("domain: x\nneutral_prompt: p\ntemplates: ['{phrase}']\nattributes:\n"
                   "  - {name: tag, kind: artifact, where: middle}\n")
    with pytest.raises(XCounterError, match=r"bad\.yaml: attribute 'tag' has unknown where 'middle'"):
        load_attributes(bad)
    from xcounter.attributes import Attribute
    with pytest.raises(XCounterError, match="unknown where 'centre'"):  # the Python API is checked too
        Attribute(name="tag", kind="artifact", where="centre")


def test_attribute_files_can_give_a_box(tmp_path):
    from xcounter.attributes import Attribute, load_attributes

    assert load_attributes("cxr")["endotracheal_tube"].where == (0.0, 0.3, 0.38, 0.62)
    boxed = tmp_path / "boxed.yaml"
    boxed.write_text("domain: x\nneutral_prompt: p\ntemplates: ['{phrase}']\nattributes:\n"
                     "  - {name: tag, kind: device, where: [0, 0.5, 0.25, 1]}\n")
    assert load_attributes(boxed)["tag"].where == (0.0, 0.5, 0.25, 1.0)
    for box in ([0.5, 0.2, 0, 1], [0, 1.5, 0, 1], [0, 1, 0], [0, 1, 0, "x"], [0, 1, True, 1]):
        with pytest.raises(XCounterError, match="bad where box"):
            Attribute(name="tag", kind="device", where=box)
    bad = tmp_path / "bad.yaml"
    bad.write_text(boxed.read_text().replace("[0, 0.5, 0.25, 1]", "[0.9, 0.1, 0, 1]"))
    with pytest.raises(XCounterError, match=r"bad\.yaml: attribute 'tag' has a bad where box"):
        load_attributes(bad)


@pytest.mark.parametrize("device", ["endotracheal_tube", "central_line", "chest_tube", "pacemaker"])
def test_cxr_device_boxes_hold_what_the_renderer_draws_and_spare_the_film_labels(device):
    """A device's box must take in every pixel the phantom renderer draws for it (else its removal leaves
    a piece behind). The chest tube's and the pacemaker's must also keep clear of the film's labels at the
    shipped generator's 16 x 16 latent (else their edits erase the "PORTABLE" stamp or the laterality marker,
    as the tube's did in the demo); the labels' bottom pixel rows share a latent row with the devices' tips,
    hence a share of a label, not none."""
    import numpy as np

    from xcounter.attributes import load_attributes
    from xcounter.disentangle.edit_region import prior_region
    from xcounter.phantoms import cxr

    def drawn(attributes: dict, seed: int, name: str, **details) -> np.ndarray:
        """Where the renderer draws `name` on this phantom (128 x 128, its largest change over channels)."""
        on = cxr.render(cxr.finalize({**attributes, name: True, **details}), seed)
        off = cxr.render(cxr.finalize({**attributes, name: False}), seed)
        return np.abs(on - off).reshape(128, 128, -1).max(-1)

    box = prior_region(load_attributes("cxr")[device].where, (4, 16, 16))[0, 0].numpy()
    inside = np.kron(box, np.ones((8, 8))) > 0  # the latent box at the renderer's 128 px
    side = {name: f"{name}_side" for name in ("chest_tube", "pacemaker", "central_line")}
    for seed in range(7000, 7006):
        attributes = cxr.sample_attributes(seed)
        for value in ("right", "left"):
            details = {side[device]: value} if device in side else {}
            pixels = drawn(attributes, seed, device, **details) > 0.01
            assert pixels.any() and not (pixels & ~inside).any(), f"{device} outside its box (seed {seed})"
        for label in ("portable_label", "laterality_marker") if device in ("chest_tube", "pacemaker") else ():
            glyphs = drawn(attributes, seed, label)
            assert glyphs.sum() > 0 and (glyphs * inside).sum() / glyphs.sum() < 0.25, \
                f"{device}'s box takes in the {label} (seed {seed})"


def test_localise_accepts_signs_and_refuses_others():
    from xcounter.methods.trajectory import localised_signs

    assert localised_signs(True) == ("add", "remove") and localised_signs(False) == ()
    assert localised_signs(["remove", "add"]) == ("add", "remove") and localised_signs("remove") == ("remove",)
    with pytest.raises(XCounterError, match="localise takes signs"):
        localised_signs(["delete"])


def test_the_difference_map_outlines_the_region():
    import io

    import numpy as np
    from PIL import Image

    from xcounter.report.plots import REGION_COLOUR, difference_png, region_outline

    region = np.zeros((8, 8), dtype=np.float32)
    region[2:6, 2:6] = 1
    outline = region_outline(region)
    assert outline.sum() == 12 and not outline[3:5, 3:5].any() and outline[2, 2]
    png, _ = difference_png(np.zeros((8, 8, 1), dtype=np.float32), region)
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert tuple(pixels[2, 2]) == tuple(round(c * 255) for c in REGION_COLOUR)
    assert tuple(pixels[0, 0]) != tuple(pixels[2, 2])  # unchanged and outside: the map's white
