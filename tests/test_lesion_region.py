"""The off-lesion prior: finding the lesion of a dermoscopy scan, and keeping artifact edits off it."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from xcounter.disentangle.edit_region import pixel_prior, prior_region
from xcounter.disentangle.lesion_region import (beside_lesion_pixels, ink_pixels, lesion_mask, lesion_pixels,
                                                 lesion_region, outside_lesion_region)


def _skin_with_disc(size: int = 64, radius: float = 0.3, hair: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Light skin with a brown disc at the centre (and a hair strand across everything)."""
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    disc = np.hypot(x - 0.05, y + 0.05) < radius
    image = np.broadcast_to(np.array([0.85, 0.65, 0.55], np.float32), (size, size, 3)).copy()
    image[disc] = [0.45, 0.28, 0.2]
    if hair:
        image[np.abs(y - 0.6 * x) < 1.5 / size] = [0.08, 0.05, 0.04]
    return image, disc


def test_a_dark_disc_on_skin_is_the_lesion_and_a_hair_across_it_is_not():
    image, disc = _skin_with_disc(hair=True)
    found = lesion_mask(image)
    assert found is not None
    iou = (found & disc).sum() / (found | disc).sum()
    assert iou > 0.9  # the hair strand, which crosses the frame, is neither joined to nor cut out of the lesion


def test_a_thick_strand_joining_the_lesion_to_the_frame_does_not_hide_it():
    """A thick hair (or an ink stroke across one) survives the stroke filter and the first opening and bridges
    the lesion to the frame, where components are dropped; a wider opening cuts the bridge."""
    image, disc = _skin_with_disc()
    axis = (np.arange(64) + 0.5) / 64 * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    image[(np.abs(x - 0.05) < 6 / 64) & (y < 0)] = [0.08, 0.05, 0.04]  # 6 px wide, from the disc to the top edge
    found = lesion_mask(image)
    assert found is not None
    assert (found & disc).sum() / (found | disc).sum() > 0.85
    assert not found[:5].any()  # the strand near the frame is not lesion


def test_an_ink_arc_hugging_the_lesion_is_not_lesion():
    """The stroke filter blends an ink arc drawn along the lesion's edge into the lesion; it is cut out by its colour,
    so an off-lesion edit can still reach (and remove) it."""
    image, disc = _skin_with_disc()
    axis = (np.arange(64) + 0.5) / 64 * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    radius = np.hypot(x - 0.05, y + 0.05)
    arc = (radius > 0.31) & (radius < 0.37) & (y < 0)  # 2 px wide, one pixel off the disc, over its top half
    image[arc] = [0.55, 0.35, 0.6]  # gentian violet
    assert ink_pixels(image)[arc].mean() > 0.9 and not ink_pixels(image)[~arc].any()
    found = lesion_mask(image)
    assert found is not None and not found[arc].any()
    assert (found & disc).sum() / (found | disc).sum() > 0.85


def test_a_violaceous_lesion_is_still_a_lesion():
    """Only thin ink-coloured strokes are cut: a purple blob (an angioma) is found whole."""
    image, disc = _skin_with_disc()
    image[disc] = [0.55, 0.35, 0.6]
    assert ink_pixels(image)[disc].all()
    found = lesion_mask(image)
    assert found is not None and (found & disc).sum() / (found | disc).sum() > 0.9


def _two_tone_lesion(size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dark skin with a variegated lesion: a tan half (lighter than the skin) and a near-black half, split by a
    seam of the skin's own colour, as the stroke filter blurs the boundary between them (scan 10000026)."""
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    disc = np.hypot(x, y) < 0.35
    image = np.broadcast_to(np.array([0.45, 0.3, 0.22], np.float32), (size, size, 3)).copy()
    image[disc & (x < -0.03)] = [0.85, 0.6, 0.45]
    image[disc & (x > 0.03)] = [0.12, 0.07, 0.05]  # a 2-pixel seam
    return image, disc, y


def test_a_variegated_lesion_split_by_a_skin_coloured_seam_is_found_whole():
    """Both halves are lesion: keeping the part nearest the centre alone drew a veil into the tan half and an ink
    arc over the dark one."""
    image, disc, _ = _two_tone_lesion()
    found = lesion_mask(image)
    assert found is not None
    assert (found & disc).sum() / (found | disc).sum() > 0.85


def test_a_white_blob_beside_the_lesion_is_not_joined_to_it():
    """A gel bubble or a glare stands out from the skin too, but it is brighter and greyer than the skin."""
    image, disc = _skin_with_disc()
    axis = (np.arange(64) + 0.5) / 64 * 2 - 1
    y, x = np.meshgrid(axis, axis, indexing="ij")
    blob = np.hypot(x - 0.05, y - 0.42) < 0.1  # 2 px off the lesion's lower edge
    image[blob] = [0.97, 0.97, 0.97]
    found = lesion_mask(image)
    assert found is not None and not found[blob].any()
    assert (found & disc).sum() / (found | disc).sum() > 0.85


def test_ink_colour_is_neither_skin_nor_lesion_nor_veil():
    colours = {"skin": [0.85, 0.65, 0.55], "dark skin": [0.45, 0.3, 0.22], "lesion": [0.35, 0.2, 0.12],
               "veil": [0.55, 0.6, 0.7], "ink": [0.55, 0.35, 0.6]}
    image = np.array([[c for c in colours.values()]], np.float32)
    assert ink_pixels(image)[0].tolist() == [False, False, False, False, True]


def test_no_lesion_no_mask():
    assert lesion_mask(np.full((32, 32, 3), 0.7, np.float32)) is None
    image, _ = _skin_with_disc()
    image[:, :] = [0.45, 0.28, 0.2]  # all "lesion": nothing stands out from the skin
    assert lesion_mask(image) is None


def test_lesion_mask_matches_the_renderers_lesion_on_skin_phantoms():
    """The renderer knows where it drew the lesion; the segmentation must find it on most phantoms, with
    hair, ink, gel bubbles, rulers, colour charts, dark corners and every skin type in the mix."""
    from xcounter.phantoms import draw, make_phantom, skin

    ious = []
    for seed in range(3_000, 3_040):
        pixels, _ = make_phantom("skin", seed, size=64)
        x, y = draw.grid(64)
        truth = skin._lesion(skin.sample_attributes(seed), seed, x, y, 64)[0] > 0.5
        found = lesion_mask(pixels)
        ious.append(0.0 if found is None else (found & truth).sum() / (found | truth).sum())
    ious = np.array(ious)
    assert np.mean(ious) > 0.75 and np.mean(ious > 0.5) >= 0.85


def test_outside_lesion_region_is_latent_sized_and_off_the_lesion():
    image, disc = _skin_with_disc(radius=0.4)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    region = outside_lesion_region(tensor, (1, 4, 16, 16))
    assert region.shape == (1, 1, 16, 16)
    assert region[0, 0, 8, 8] == 0 and region[0, 0, 0, 0] == 1 and region[0, 0, 15, 15] == 1
    share = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(disc.astype(np.float32))[None, None], 16)
    assert torch.equal(region, (share < 0.5).float())  # a cell is lesion when most of its pixels are
    assert torch.equal(outside_lesion_region(image, (16, 16)), region)  # arrays work as well as tensors
    assert outside_lesion_region(np.full((64, 64, 3), 0.7, np.float32), (16, 16)) is None  # no lesion: anywhere


def test_lesion_region_covers_the_lesion_and_a_margin_and_nothing_far_from_it():
    image, disc = _skin_with_disc(radius=0.3)
    region = lesion_region(image, (16, 16))
    assert region.shape == (1, 1, 16, 16)
    share = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(disc.astype(np.float32))[None, None], 16)
    assert torch.all(region[share > 0] == 1)  # every cell the lesion reaches into may be edited
    assert region[0, 0, 0, 0] == 0 and region[0, 0, 15, 15] == 0  # the skin far from it may not
    tight, wide = lesion_region(image, (16, 16), margin=0.0), lesion_region(image, (16, 16), margin=0.15)
    assert torch.all(tight <= region) and torch.all(region <= wide) and tight.sum() < wide.sum()
    assert lesion_region(np.full((64, 64, 3), 0.7, np.float32), (16, 16)) is None  # no lesion: anywhere


def test_off_lesion_prior_needs_the_scan():
    for where in ("off_lesion", "beside_lesion", "clear_of_lesion", "on_lesion", "in_lesion"):
        with pytest.raises(ValueError, match=where):
            prior_region(where, (1, 4, 16, 16))
    for where in ("in_lesion", "beside_lesion"):
        with pytest.raises(ValueError, match=where):
            pixel_prior(where)
    image, _ = _skin_with_disc()
    region = prior_region("off_lesion", (1, 4, 16, 16), torch.from_numpy(image).permute(2, 0, 1)[None])
    assert region is not None and region[0, 0, 8, 8] == 0


def test_skin_artifacts_that_lie_on_or_around_the_lesion_are_kept_off_it():
    from xcounter.attributes import load_attributes

    skin = load_attributes("skin")
    assert {a.name for a in skin if a.where == "beside_lesion"} == {"ink_marking"}  # its arc lies just off the rim
    assert {a.name for a in skin if a.where == "clear_of_lesion"} == {"hair", "gel_bubbles"}
    assert all(a.kind == "artifact" for a in skin if a.where in ("beside_lesion", "clear_of_lesion"))


def test_findings_inside_the_lesion_are_edited_only_on_it():
    from xcounter.attributes import load_attributes

    skin = load_attributes("skin")
    assert {a.name for a in skin if a.where == "on_lesion"} == {"dots_globules"}  # dots also sit on the rim
    assert {a.name for a in skin if a.where == "in_lesion"} == {"blue_white_veil", "color_variegation"}
    assert skin["asymmetry"].where == "anywhere"  # a shape change reaches past the lesion's current edge
    image, _ = _skin_with_disc()
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    on, off = prior_region("on_lesion", (1, 4, 16, 16), tensor), prior_region("off_lesion", (1, 4, 16, 16), tensor)
    assert torch.all(on + off >= 1)  # together they reach every cell: none is frozen for both
    assert on[0, 0, 8, 8] == 1 and on[0, 0, 0, 0] == 0
    assert torch.equal(prior_region("in_lesion", (1, 4, 16, 16), tensor), on)  # the same latent cells


def test_an_in_lesion_pixel_mask_lies_inside_the_lesion_and_keeps_its_rim():
    image, disc = _skin_with_disc(radius=0.4)
    mask = lesion_pixels(image)
    assert mask is not None and mask.shape == (1, 1, 64, 64)
    inside = mask[0, 0].numpy()
    assert inside[disc].max() == 1.0 and inside[~disc].max() < 0.5  # off the lesion the edit is (all but) cut
    from scipy import ndimage
    rim = disc & ~ndimage.binary_erosion(disc, iterations=1)
    assert inside[rim].max() < 0.5  # the lesion's own edge is kept, so its outline is the scan's
    deeper = lesion_pixels(image, inset=0.1)[0, 0].numpy()
    assert (deeper > 0.5).sum() < (inside > 0.5).sum()
    small, _ = _skin_with_disc(radius=0.2)
    kept = lesion_pixels(small, inset=0.3)  # a lesion too small to shrink that far is kept whole
    assert kept is not None and kept[0, 0].numpy()[lesion_mask(small)].min() == 1.0
    assert lesion_pixels(np.full((64, 64, 3), 0.7, np.float32)) is None  # no lesion: no pixel cut
    assert pixel_prior("on_lesion", torch.from_numpy(image).permute(2, 0, 1)[None]) is None  # the latent cells do
    assert pixel_prior("periphery") is None and pixel_prior("anywhere") is None
    assert pixel_prior("in_lesion", torch.from_numpy(image).permute(2, 0, 1)[None], "remove") is None  # rim too


def test_clear_of_lesion_also_keeps_a_ring_around_the_lesion():
    image, _ = _skin_with_disc(radius=0.4)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    off = prior_region("off_lesion", (1, 4, 16, 16), tensor)
    clear = prior_region("clear_of_lesion", (1, 4, 16, 16), tensor)
    assert torch.all(clear <= off) and clear.sum() < off.sum()  # a ring of cells more is kept
    assert clear[0, 0, 0, 0] == 1  # the frame is still editable


def _angle_from(centre: tuple[float, float], mask: np.ndarray) -> np.ndarray:
    """The angles (radians, image axes: y down) of a mask's pixels seen from `centre` (row, column)."""
    rows, cols = np.nonzero(mask)
    return np.arctan2(rows + 0.5 - centre[0], cols + 0.5 - centre[1])


def test_an_ink_marking_is_added_in_one_sector_beside_the_lesion_facing_the_image_centre():
    """A surgeon's mark is a short arc on one side: the addition's pixel mask is one sector of the skin around the
    lesion (not a ring), off the lesion, facing the widest skin; a centred lesion's faces up."""
    image, disc = _skin_with_disc(radius=0.25)
    image, disc = np.roll(image, (10, -10), axis=(0, 1)), np.roll(disc, (10, -10), axis=(0, 1))  # down and left
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    mask = beside_lesion_pixels(tensor)
    assert mask is not None and mask.shape == (1, 1, 64, 64)
    sector = mask[0, 0].numpy()
    assert sector[disc].max() == 0  # the lesion itself is never drawn on
    rows, cols = np.nonzero(disc)
    centre = (rows.mean() + 0.5, cols.mean() + 0.5)
    angles = _angle_from(centre, sector > 0.5)
    facing = np.arctan2(32 - centre[0], 32 - centre[1])  # towards the image's centre: up and right
    spread = np.abs((angles - facing + np.pi) % (2 * np.pi) - np.pi)
    assert spread.max() <= np.radians(135 / 2 + 5)  # one sector of about 135 degrees, not a ring
    assert spread.max() >= np.radians(135 / 2 - 10)
    rows, cols = np.nonzero(sector > 0.5)
    reach = np.hypot(rows + 0.5 - centre[0], cols + 0.5 - centre[1]) / np.sqrt(disc.sum() / np.pi)
    assert reach.min() >= 0.9 and reach.max() <= 1.95  # just beside the rim, where the renderer's arc is drawn
    narrow = beside_lesion_pixels(tensor, degrees=60.0)[0, 0].numpy()
    assert (narrow > 0.5).sum() < 0.6 * (sector > 0.5).sum()
    centred, _ = _skin_with_disc(radius=0.25)  # its centre 2 pixels from the image's
    up = beside_lesion_pixels(centred)[0, 0].numpy()
    rows, _ = np.nonzero(up > 0.5)
    assert rows.max() < 32  # faces up: drawn above the lesion
    assert beside_lesion_pixels(np.full((64, 64, 3), 0.7, np.float32)) is None  # no lesion: no cut


def test_a_beside_lesion_attribute_is_removed_anywhere_off_the_lesion_and_added_in_its_sector():
    image, _ = _skin_with_disc(radius=0.25)
    tensor = torch.from_numpy(image).permute(2, 0, 1)[None]
    assert torch.equal(prior_region("beside_lesion", (1, 4, 16, 16), tensor),
                       prior_region("off_lesion", (1, 4, 16, 16), tensor))  # the same latent cells
    assert pixel_prior("beside_lesion", tensor, "remove") is None  # a removal must reach ink wherever it is
    assert pixel_prior("off_lesion", tensor, "add") is None
    assert torch.equal(pixel_prior("beside_lesion", tensor, "add"), beside_lesion_pixels(tensor))


def _tiny_edit_on_a_disc(attribute: str, where: str, sign: str = "add"):
    """The tiny generator editing one CXR attribute (`sign`), moved to `where`, on a scan with a dark disc, toward
    the tiny classifier's Effusion: (generator, inversion, context, attribute, trajectory)."""
    from tiny_classifier import TINY_LABELS, TINY_OP_THRESHS, make_tiny_densenet
    from tiny_generator import tiny_pipeline
    from xcounter.attributes import load_attributes
    from xcounter.classifiers import Classifier, logit, make_profile
    from xcounter.generators import SDGenerator
    from xcounter.methods import EditContext, get_method

    generator = SDGenerator(tiny_pipeline(1, seed=0), steps=4, name="tiny-sd")
    classifier = Classifier(make_tiny_densenet(0), TINY_LABELS, logit(TINY_OP_THRESHS), make_profile("xrv", size=32),
                            name="tiny-densenet")
    cxr = load_attributes("cxr")
    moved = dataclasses.replace(cxr[attribute], where=where)
    image, _ = _skin_with_disc(size=generator.resolution, radius=0.5)
    inversion = generator.invert(torch.from_numpy(image.mean(axis=-1))[None, None], "chest radiograph", 4)
    context = EditContext(classifier=classifier, generator=generator,
                          attributes=dataclasses.replace(cxr, attributes=(moved,)), inversion=inversion,
                          source_embedding=generator.embed(["chest radiograph"])[0], target="Effusion",
                          target_index=classifier.target_index("Effusion"), steps=4)
    return generator, inversion, context, moved, get_method("trajectory", swap_steps=[2, 0]).trajectory(
        context, moved, sign)


def test_an_off_lesion_edit_leaves_the_lesion_as_reconstructed():
    """Through the trajectory method: the scan's own lesion is found, and its latent cells stay on the source
    path at every candidate swap step, while the skin around it is edited."""
    _, inversion, _, _, trajectory = _tiny_edit_on_a_disc("chest_tube", "off_lesion")
    expected = outside_lesion_region(inversion.image, trajectory.points.shape)
    assert torch.equal(trajectory.region, expected) and expected.sum() < expected.numel()
    lesion = expected[0].expand_as(trajectory.points[0]) == 0
    assert torch.allclose(trajectory.points[1:][:, lesion], trajectory.points[0][lesion].expand(2, -1), atol=1e-6)
    assert not torch.allclose(trajectory.points[-1], trajectory.points[0], atol=1e-4)  # the skin is edited


def test_an_in_lesion_edit_changes_no_pixel_outside_the_lesion():
    """Through the trajectory method: every image of an "in_lesion" edit (its control points and any further
    sample) equals the unedited one wherever the pixel mask is 0, and still changes inside the lesion."""
    from xcounter.methods import get_method

    generator, inversion, context, effusion, trajectory = _tiny_edit_on_a_disc("pleural_effusion", "in_lesion")
    mask = lesion_pixels(inversion.image)
    assert trajectory.pixels is not None and torch.equal(trajectory.pixels.mask, mask)
    outside = (mask[0, 0] == 0).expand_as(trajectory.images[0])
    images = torch.cat([trajectory.images, trajectory.image_at(1),
                        trajectory.render(generator, trajectory.points[-1:] * 0.5 + trajectory.points[:1] * 0.5)])
    assert torch.equal(images[:, outside], trajectory.images[0][outside].expand(len(images), -1))
    inside = (mask[0, 0] == 1).expand_as(trajectory.images[0])
    assert not torch.allclose(trajectory.images[-1][inside], trajectory.images[0][inside], atol=1e-4)
    from xcounter.methods.trajectory import region_image
    shown = region_image(trajectory.region, tuple(trajectory.images.shape[-2:]), trajectory.pixels.mask)
    assert set(np.unique(shown)) <= {0.0, 1.0} and shown[(mask[0, 0] == 0).numpy()].max() == 0  # as it was cut
    counterfactual = get_method("trajectory", swap_steps=[2, 0]).generate(context, effusion, "add")
    assert counterfactual.region is not None and counterfactual.region.sum() <= (mask[0, 0] >= 0.5).sum()


def test_an_in_lesion_removal_is_not_cut_inside_the_rim():
    """A removal must reach a finding on the rim too: it gets the latent region, no pixel cut."""
    _, inversion, _, _, trajectory = _tiny_edit_on_a_disc("pleural_effusion", "in_lesion", sign="remove")
    assert trajectory.pixels is None and lesion_pixels(inversion.image) is not None


def test_a_beside_lesion_addition_changes_no_pixel_outside_its_sector_and_a_removal_is_not_cut():
    """Through the trajectory method: an ink addition is drawn only in its sector beside the lesion, so it can be
    no ring; its removal has no pixel cut, so ink anywhere off the lesion can be taken away."""
    _, inversion, _, _, trajectory = _tiny_edit_on_a_disc("chest_tube", "beside_lesion")
    mask = beside_lesion_pixels(inversion.image)
    assert mask is not None and trajectory.pixels is not None and torch.equal(trajectory.pixels.mask, mask)
    outside = (mask[0, 0] == 0).expand_as(trajectory.images[0])
    assert torch.equal(trajectory.images[:, outside], trajectory.images[0][outside].expand(len(trajectory.images), -1))
    assert torch.equal(trajectory.region, outside_lesion_region(inversion.image, trajectory.points.shape))
    removal = _tiny_edit_on_a_disc("chest_tube", "beside_lesion", sign="remove")[-1]
    assert removal.pixels is None
