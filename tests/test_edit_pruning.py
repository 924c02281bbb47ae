"""A flipping counterfactual pruned to the fewest parts of its edit that still flip the decision."""
import numpy as np
import pytest
import torch

from xcounter.edit_pruning import MAX_PARTS, PART_FLOOR, PART_FRACTIONS, checked_fractions, edit_parts, prune_edit
from xcounter.errors import ModelError, XCounterError

SIDE = 32


def blob(top: int, left: int, size: int = 5, value: float = 0.5) -> torch.Tensor:
    image = torch.zeros(1, 1, SIDE, SIDE)
    image[..., top:top + size, left:left + size] = value
    return image


def left_half_mean(images: torch.Tensor) -> torch.Tensor:
    """A 'classifier' that looks only at the left half: margin = its mean intensity above 0.13 (positive = yes)."""
    return (images[..., :, :SIDE // 2].mean(dim=(1, 2, 3)) - 0.13) * 20


def test_an_edit_splits_into_its_connected_parts_strongest_first():
    difference = (blob(4, 4, value=0.2) + blob(20, 22, size=6, value=0.6))[0].numpy()
    magnitude, parts = edit_parts(difference)
    assert magnitude.shape == (SIDE, SIDE)
    assert len(parts) == 2
    assert parts[0][22, 24] and not parts[0][6, 6]  # the larger, stronger blob first
    assert parts[1][6, 6] and not parts[1][22, 24]


def test_a_faint_edit_has_no_parts_and_many_parts_are_capped():
    _, parts = edit_parts(np.full((1, SIDE, SIDE), PART_FLOOR / 4, dtype=np.float32))
    assert parts == []
    difference = sum(blob(3 + 7 * (k // 4), 3 + 7 * (k % 4), size=3, value=0.1 + 0.05 * k)
                     for k in range(12))[0].numpy()
    _, parts = edit_parts(difference)
    assert len(parts) == MAX_PARTS
    assert sum(int(p.any()) for p in parts) == MAX_PARTS
    assert parts[-1].sum() > parts[0].sum()  # the weakest five merged into the last part


def test_pruning_keeps_the_part_that_flips_and_drops_the_side_effect():
    """The edit draws what the classifier reads (left) and a side effect it ignores (right): only the first
    is kept, pixel for pixel; the right is the unedited image again."""
    unedited = torch.full((1, 1, SIDE, SIDE), 0.1)
    counterfactual = unedited + blob(10, 4, size=6, value=0.6) + blob(10, 24, size=6, value=0.8)
    assert left_half_mean(unedited).item() < 0 < left_half_mean(counterfactual).item()
    pruned = prune_edit(unedited, counterfactual, left_half_mean, reference_positive=False)
    assert pruned is not None
    assert (pruned.parts, pruned.kept) == (2, 1)
    assert pruned.margin > 0 and pruned.margin == pytest.approx(left_half_mean(pruned.image).item(), abs=1e-5)
    assert torch.allclose(pruned.image[..., 10:16, 4:10], counterfactual[..., 10:16, 4:10])
    assert torch.allclose(pruned.image[..., 8:18, 22:32], unedited[..., 8:18, 22:32])
    assert pruned.mask[12, 6] == 1.0 and pruned.mask[12, 26] == 0.0


def test_pruning_keeps_two_parts_when_one_alone_does_not_flip():
    unedited = torch.full((1, 1, SIDE, SIDE), 0.1)
    counterfactual = unedited + blob(4, 2, size=5, value=0.5) + blob(20, 8, size=5, value=0.45) \
        + blob(12, 24, size=5, value=0.9)
    assert left_half_mean(blob(4, 2, size=5, value=0.5) + unedited).item() < 0
    pruned = prune_edit(unedited, counterfactual, left_half_mean, reference_positive=False)
    assert pruned is not None and (pruned.parts, pruned.kept) == (3, 2)
    assert torch.allclose(pruned.image[..., 12:17, 24:29], unedited[..., 12:17, 24:29])


def test_no_pruning_when_no_part_set_flips_or_nothing_changed():
    unedited = torch.full((1, 1, SIDE, SIDE), 0.1)
    faint_wash = unedited + 0.04 * torch.ones_like(unedited)  # flips, but too faint to be a part
    faint_wash[..., 10:16, 20:26] += 0.5  # the only part lies where the classifier does not look
    assert left_half_mean(faint_wash).item() > 0
    assert prune_edit(unedited, faint_wash, left_half_mean, reference_positive=False) is None
    assert prune_edit(unedited, unedited.clone(), left_half_mean, reference_positive=False) is None


def test_a_removal_is_pruned_toward_the_negative_side():
    """From a positive decision the parts are ranked by how far each lowers the margin."""
    unedited = torch.full((1, 1, SIDE, SIDE), 0.1) + blob(10, 4, size=6, value=0.6)
    counterfactual = unedited - blob(10, 4, size=6, value=0.6) + blob(2, 24, size=4, value=0.5)
    pruned = prune_edit(unedited, counterfactual, left_half_mean, reference_positive=True)
    assert pruned is not None and pruned.kept == 1 and pruned.margin < 0
    assert torch.allclose(pruned.image[..., 2:6, 24:28], unedited[..., 2:6, 24:28])


def test_over_several_levels_the_smallest_flipping_selection_wins():
    """One blob with a strong core and a faint rim: at the default level the rim belongs to the part and is kept;
    split at a higher level too, the core alone flips and is shown."""
    unedited = torch.full((1, 1, SIDE, SIDE), 0.1)
    counterfactual = unedited + blob(6, 2, size=12, value=0.3) + blob(10, 6, size=5, value=0.5)
    assert left_half_mean(unedited + blob(10, 6, size=5, value=0.8)).item() > 0  # the core alone flips
    whole = prune_edit(unedited, counterfactual, left_half_mean, reference_positive=False)
    both = prune_edit(unedited, counterfactual, left_half_mean, reference_positive=False, fractions=(0.15, 0.5))
    assert whole is not None and both is not None
    assert both.mask.sum() < whole.mask.sum()
    assert torch.allclose(both.image[..., 6:8, 2:4], unedited[..., 6:8, 2:4], atol=0.01)  # the rim's corner
    assert both.mask[6:8, 2:14].mean() < 0.5 and (whole.mask[7:17, 3:13] == 1.0).all()
    assert torch.allclose(whole.image[..., 7:17, 3:13], counterfactual[..., 7:17, 3:13])
    assert prune_edit(unedited, counterfactual, left_half_mean, reference_positive=False,
                      fractions=(0.5, 0.15)).mask.sum() == both.mask.sum()  # the order of levels does not matter


def test_the_levels_are_checked_and_sorted():
    assert checked_fractions([0.3, 0.15, 0.3]) == (0.15, 0.3)
    assert checked_fractions((0.5,)) == (0.5,)
    for bad in ([], [0], [1.0], [0.2, 1.5], ["0.2"], [True], 0.2, None):
        with pytest.raises(XCounterError, match="prune_fractions must be a list"):
            checked_fractions(bad)


def test_a_generator_folder_sets_its_own_levels(tmp_path):
    """`prune_fractions` in xcounter.json: read, named in the generator's identity where not the default, and a
    bad value is a one-line model error naming the file."""
    from tiny_generator import tiny_generator_dir
    from xcounter.generators import load_generator

    own = load_generator(tiny_generator_dir(tmp_path / "own", settings={"steps": 2, "prune_fractions": [0.3, 0.15]}))
    assert own.prune_fractions == (0.15, 0.3) and own.identity()["prune_fractions"] == [0.15, 0.3]
    plain = load_generator(tiny_generator_dir(tmp_path / "plain", settings={"steps": 2}))
    assert plain.prune_fractions == PART_FRACTIONS and "prune_fractions" not in plain.identity()
    with pytest.raises(ModelError, match="xcounter.json: prune_fractions must be a list"):
        load_generator(tiny_generator_dir(tmp_path / "bad", settings={"prune_fractions": [0.15, 2]}))
