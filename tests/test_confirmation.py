"""Shortcut flags re-asked on the edit's own pixels (`xcounter.confirmation`)."""
import numpy as np
import pytest
import torch

from xcounter.classifiers import Classifier
from xcounter.confirmation import CORE_FRACTION, confirm_shortcuts, core_image, core_mask
from xcounter.explainer import verdict_of
from xcounter.explanation import AttributeResult, Counterfactual, Explanation

SIZE = 16


class _PatchOrHaze(torch.nn.Module):
    """Two decisions on a 16 x 16 image: "Device" reads the top-left 4 x 4 patch, "Haze" the rest of the image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        patch = images[:, 0, :4, :4].mean(dim=(1, 2))
        mask = torch.ones(SIZE, SIZE, dtype=torch.bool)
        mask[:4, :4] = False
        rest = images[:, 0][:, mask].mean(dim=1)
        return torch.stack([20 * patch - 5, 100 * rest - 5], dim=1)


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    return Classifier(_PatchOrHaze(), ["Device", "Haze"], thresholds=[0.0, 0.0], name="patch-or-haze")


def _edit() -> tuple[np.ndarray, np.ndarray]:
    """(reconstruction, counterfactual): a bright device in the patch and a faint haze everywhere else."""
    reconstruction = np.zeros((SIZE, SIZE, 1), dtype=np.float32)
    counterfactual = np.full_like(reconstruction, 0.1)
    counterfactual[:4, :4] = 1.0
    return reconstruction, counterfactual


def _flag(target: str, counterfactual: np.ndarray, kind: str = "device",
          probabilities: tuple[float, ...] = (0.01, 0.99)) -> AttributeResult:
    """A flip of `target`; `probabilities` along the trajectory, at evenly spaced strengths from 0 to 1."""
    edit = Counterfactual(attribute="pacemaker", sign="add", method="trajectory",
                          strengths=list(np.linspace(0, 1, len(probabilities))), probabilities=list(probabilities),
                          minimal_strength=0.5, flipped=True, probability_before=probabilities[0],
                          probability_after=0.99, image=counterfactual, l1=0.1)
    return AttributeResult(target=target, attribute="pacemaker", kind=kind, verdict=verdict_of(kind, True),
                           minimal_strength=0.5, flipped=True, sign="add", counterfactuals=[edit])


def test_the_core_is_the_strongest_change_only():
    reconstruction, counterfactual = _edit()
    mask = core_mask(counterfactual - reconstruction)
    assert mask.shape == (SIZE, SIZE) and mask[:4, :4].all() and mask.sum() == 16  # the haze (0.1) is under 0.15
    assert core_mask(counterfactual - reconstruction, fraction=0.05).all()
    assert not core_mask(np.zeros((SIZE, SIZE, 3))).any()  # no edit, no core
    hybrid, same = core_image(reconstruction, counterfactual)
    assert np.array_equal(same, mask)
    assert np.allclose(hybrid[:4, :4], 1.0) and np.allclose(hybrid[~mask], 0.0)


def test_a_flag_the_device_pixels_make_stays_a_shortcut(classifier):
    reconstruction, counterfactual = _edit()
    flag = _flag("Device", counterfactual)
    confirm_shortcuts([flag], classifier, reconstruction)
    assert flag.verdict == "shortcut" and flag.drives_decision
    assert flag.core.flipped and flag.core.probability > 0.5
    assert flag.core.fraction == CORE_FRACTION and flag.core.share == pytest.approx(16 / SIZE ** 2)


def test_a_flag_only_the_surroundings_make_is_unconfirmed(classifier):
    """The haze the generator drew around the device flips "Haze"; the device alone does not."""
    reconstruction, counterfactual = _edit()
    flag = _flag("Haze", counterfactual)
    drives = _flag("Haze", counterfactual, kind="pathology")
    confirm_shortcuts([flag, drives], classifier, reconstruction)
    assert flag.verdict == "unconfirmed" and not flag.drives_decision and flag.flipped
    assert not flag.core.flipped and flag.core.probability < 0.5
    assert drives.verdict == "drives" and drives.core is None  # only device/artifact flags are re-asked
    assert verdict_of("device", True, flag.core.flipped) == "unconfirmed"


def test_the_flip_margin_applies_to_the_core_too(classifier):
    reconstruction, counterfactual = _edit()
    counterfactual[:4, :4] = 0.3  # the patch alone: logit 20 * 0.3 - 5 = 1
    flag = _flag("Device", counterfactual)
    confirm_shortcuts([flag], classifier, reconstruction, flip_margin=0.5)
    assert flag.verdict == "shortcut"
    flag = _flag("Device", counterfactual)
    confirm_shortcuts([flag], classifier, reconstruction, flip_margin=2.0)
    assert flag.verdict == "unconfirmed"


def test_unconfirmed_flips_rank_after_credited_ones_and_round_trip(classifier):
    from xcounter.report.sample import sample_explanation

    reconstruction, counterfactual = _edit()
    small = _flag("Haze", counterfactual)
    small.counterfactuals[0].l1 = 0.01  # the smaller edit, but not the device's doing
    large = _flag("Haze", counterfactual, kind="pathology")
    large.attribute = "consolidation"
    confirm_shortcuts([small, large], classifier, reconstruction)
    explanation = sample_explanation()
    explanation.results = [small, large]
    assert [r.attribute for r in explanation.ranking] == ["consolidation", "pacemaker"]
    again = Explanation.from_json(explanation.to_json())
    assert again.results[0].verdict == "unconfirmed" and again.results[0].core == small.core


def test_a_pruned_flag_is_checked_on_the_whole_sample(classifier):
    """The image shown may keep only the haze (the part the decision needed); the check still asks whether the
    device the generator drew, the whole sample's strongest change, flips the decision: it does not."""
    reconstruction, counterfactual = _edit()
    haze_only = counterfactual.copy()
    haze_only[:4, :4] = 0.0
    flag = _flag("Haze", haze_only)
    flag.counterfactuals[0].sample = counterfactual
    confirm_shortcuts([flag], classifier, reconstruction)
    assert flag.verdict == "unconfirmed" and flag.core.share == pytest.approx(16 / SIZE ** 2)
    unpruned = _flag("Haze", haze_only)  # read on the haze alone, the haze is its own strongest change
    confirm_shortcuts([unpruned], classifier, reconstruction)
    assert unpruned.verdict == "shortcut"


def test_a_flag_gone_once_the_device_is_drawn_in_full_is_unconfirmed(classifier):
    """The decision flips part-way along the trajectory and is back where it was at the strongest edit: the
    device drawn in full does not move it, whatever the half-drawn one did."""
    from xcounter.report.html import render_html
    from xcounter.report.text import text_summary

    reconstruction, counterfactual = _edit()
    flag = _flag("Device", counterfactual, probabilities=(0.01, 0.99, 0.2))
    confirm_shortcuts([flag], classifier, reconstruction)
    assert flag.core.flipped and flag.core.strongest_flipped is False
    assert flag.core.strongest_probability == pytest.approx(0.2)
    assert flag.verdict == "unconfirmed" and not flag.core.confirmed
    explanation = _explanation_of(flag)
    card = render_html(explanation)
    assert "the pacemaker drawn in full, leaves the decision (probability 0.20)" in card
    assert "Pasting only the edit's strongest pixels" not in card
    assert "drawn in full it does not flip it (p 0.20" in text_summary(explanation)
    kept = _flag("Device", counterfactual, probabilities=(0.01, 0.99, 0.9))
    confirm_shortcuts([kept], classifier, reconstruction)
    assert kept.verdict == "shortcut" and kept.core.strongest_flipped
    assert "and so does the pacemaker drawn in full (probability 0.90)." in render_html(_explanation_of(kept))


def test_the_flip_margin_applies_to_the_strongest_edit_too(classifier):
    reconstruction, counterfactual = _edit()  # the device's pixels alone: logit 15, far past any margin here
    ends_at = 1 / (1 + np.exp(-0.8))  # the strongest edit: logit 0.8 past the threshold
    flag = _flag("Device", counterfactual, probabilities=(0.01, 0.99, ends_at))
    confirm_shortcuts([flag], classifier, reconstruction, flip_margin=0.5)
    assert flag.verdict == "shortcut"
    flag = _flag("Device", counterfactual, probabilities=(0.01, 0.99, ends_at))
    confirm_shortcuts([flag], classifier, reconstruction, flip_margin=1.0)
    assert flag.verdict == "unconfirmed" and flag.core.flipped


def test_a_check_from_before_the_strongest_edit_was_read_still_loads(classifier):
    """Sidecars of schema <= 1.8 have no strongest-edit fields: the core check alone decides, as it did."""
    from xcounter.explanation import CoreCheck

    old = CoreCheck(fraction=0.15, share=0.1, probability=0.9, flipped=True)
    assert old.strongest_flipped is None and old.confirmed
    assert not CoreCheck(fraction=0.15, share=0.1, probability=0.2, flipped=False).confirmed
    reconstruction, counterfactual = _edit()
    flag = _flag("Device", counterfactual, probabilities=(0.01, 0.99, 0.2))
    confirm_shortcuts([flag], classifier, reconstruction)
    explanation = _explanation_of(flag)
    assert '"strongest_flipped": false' in explanation.to_json()
    again = Explanation.from_json(explanation.to_json())
    assert again.results[0].core == flag.core and again.results[0].verdict == "unconfirmed"


def _explanation_of(flag: AttributeResult) -> Explanation:
    from xcounter.report.sample import sample_explanation

    explanation = sample_explanation()
    flag.target = explanation.targets[0]
    explanation.results = [flag]
    return explanation
