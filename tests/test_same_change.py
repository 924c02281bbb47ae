"""An addition that flips a decision only through another attribute's removal is credited to that removal."""
import json

import numpy as np
import pytest

from xcounter.explanation import AttributeResult, Counterfactual, _result_from_dict, _to_jsonable
from xcounter.same_change import (KEPT_FLOOR, SAME_PIXELS, apply_removed_causes, find_removed_causes,
                                  needed_pixels, same_change)

SIDE = 16


def _difference(box: tuple[int, int, int, int], value: float) -> np.ndarray:
    """An H x W x 3 change of `value` inside rows top:bottom, columns left:right."""
    top, bottom, left, right = box
    difference = np.zeros((SIDE, SIDE, 3), dtype=np.float32)
    difference[top:bottom, left:right] = value
    return difference


def _result(attribute: str, sign: str, difference: np.ndarray | None, flipped: bool = True,
            kind: str = "artifact", target: str = "Melanoma") -> AttributeResult:
    image = np.clip(0.5 + (difference if difference is not None else 0.0), 0, 1) * np.ones((SIDE, SIDE, 3))
    counterfactual = Counterfactual(attribute=attribute, sign=sign, method="trajectory", strengths=[0.0, 1.0],
                                    probabilities=[0.8, 0.1 if flipped else 0.7],
                                    minimal_strength=0.5 if flipped else None, flipped=flipped,
                                    probability_before=0.8, probability_after=0.1 if flipped else 0.7,
                                    image=image.astype(np.float32), difference=difference)
    verdict = ("shortcut" if kind == "artifact" else "drives") if flipped else "does not drive"
    return AttributeResult(target=target, attribute=attribute, kind=kind, verdict=verdict,
                           minimal_strength=counterfactual.minimal_strength, flipped=flipped, sign=sign,
                           counterfactuals=[counterfactual])


RULER_STRIP = (0, SIDE, 0, 3)


def test_an_addition_that_wipes_the_ruler_is_credited_to_the_rulers_removal():
    """'Add hair' flips only by darkening the ruler strip, as the ruler's removal does: mediated, by pixels."""
    ruler = _result("ruler", "remove", _difference(RULER_STRIP, -0.4))
    hair = _result("hair", "add", _difference((0, SIDE, 0, 2), -0.3))
    results = [ruler, hair]
    assert same_change(hair.best, ruler.best) == pytest.approx(1.0)
    assert find_removed_causes(results) == {"hair": "ruler"}
    apply_removed_causes(results)
    assert (hair.verdict, hair.mediator, hair.mediated_by, hair.drives_decision) == ("mediated", "ruler", "pixels",
                                                                                     False)
    assert (ruler.verdict, ruler.mediator, ruler.mediated_by) == ("shortcut", None, None)
    assert hair.flipped  # the counterfactual did flip; only the credit moves
    restored = _result_from_dict(json.loads(json.dumps(_to_jsonable(hair))))  # the explanation's JSON round trip
    assert (restored.verdict, restored.mediator, restored.mediated_by) == ("mediated", "ruler", "pixels")


def test_different_pixels_or_an_opposite_change_keep_the_verdict():
    ruler = _result("ruler", "remove", _difference(RULER_STRIP, -0.4))
    elsewhere = _result("dark_corner", "add", _difference((10, 16, 10, 16), -0.4))
    brightened = _result("color_patch", "add", _difference(RULER_STRIP, +0.4))  # the strip changed the other way
    half_inside = _result("ink_marking", "add", _difference((0, SIDE, 0, 6), -0.4))  # half its pixels are the strip's
    assert same_change(elsewhere.best, ruler.best) == 0.0 and same_change(brightened.best, ruler.best) == 0.0
    assert same_change(half_inside.best, ruler.best) == pytest.approx(0.5) and SAME_PIXELS <= 0.5
    assert find_removed_causes([ruler, elsewhere, brightened, half_inside]) == {"ink_marking": "ruler"}
    narrower = _result("ink_marking", "add", _difference((0, SIDE, 0, 8), -0.4))  # 3/8 inside: not the ruler's
    assert find_removed_causes([ruler, narrower]) == {}


def test_only_credited_additions_are_read_and_only_credited_removals_take_over():
    ruler = _result("ruler", "remove", _difference(RULER_STRIP, -0.4))
    # two removals through the same pixels cannot be told apart: both keep their verdicts
    diameter = _result("lesion_diameter", "remove", _difference(RULER_STRIP, -0.3), kind="pathology")
    assert find_removed_causes([ruler, diameter]) == {}
    # a removal that does not flip explains nothing
    still = _result("ruler", "remove", _difference(RULER_STRIP, -0.4), flipped=False)
    hair = _result("hair", "add", _difference(RULER_STRIP, -0.3))
    assert find_removed_causes([still, hair]) == {}
    # the target's own finding is never demoted
    veil = _result("blue_white_veil", "add", _difference(RULER_STRIP, -0.3), kind="pathology")
    assert find_removed_causes([ruler, veil], keep=["blue_white_veil"]) == {}
    assert find_removed_causes([ruler, veil]) == {"blue_white_veil": "ruler"}
    # targets are read apart
    other = _result("hair", "add", _difference(RULER_STRIP, -0.3), target="Nevus")
    results = [ruler, other]
    apply_removed_causes(results)
    assert other.verdict == "shortcut"


def test_needed_pixels_are_where_the_shown_image_changed():
    difference = _difference((2, 4, 2, 4), KEPT_FLOOR * 2) + _difference((8, 9, 8, 9), KEPT_FLOOR / 2)
    counterfactual = _result("hair", "add", difference).best
    assert needed_pixels(counterfactual).sum() == 4
    nothing = _result("hair", "add", np.zeros((SIDE, SIDE, 3), dtype=np.float32))
    ruler = _result("ruler", "remove", _difference(RULER_STRIP, -0.4))
    assert same_change(nothing.best, ruler.best) == 0.0


def test_a_refilled_removal_is_read_by_what_its_kept_parts_changed():
    """A refilled removal (`xcounter.removal_fill`) shows its strip at the scan's level, so most of its pixels no
    longer differ from the scan; which pixels the removal needs, and which way it moved them, are the paste's."""
    ruler = _result("ruler", "remove", _difference(RULER_STRIP, -0.4))
    best = ruler.best
    unedited = best.image - best.difference
    best.sample = (unedited + best.difference).astype(np.float32)  # the generator's sample: the strip darkened
    best.kept = np.zeros((SIDE, SIDE), dtype=np.float32)
    best.kept[:, :3] = 1.0  # the strip is the part kept
    best.image = unedited.copy()
    best.image[:, :1] -= 0.4  # refilled: only one column of the strip still differs
    best.difference = best.image - unedited
    best.filled = True
    hair = _result("hair", "add", _difference((0, SIDE, 0, 2), -0.3))
    assert needed_pixels(best)[:, :3].all() and same_change(hair.best, best) == pytest.approx(1.0)
    best.filled = False  # read as shown, the refilled strip would hold half the hair's pixels
    assert same_change(hair.best, best) == pytest.approx(0.5)
    best.filled = True
    restored = _result_from_dict(json.loads(json.dumps(_to_jsonable(ruler))))
    assert restored.best.filled and np.array_equal(restored.best.kept, best.kept)
    assert needed_pixels(restored.best)[:, :3].all()
