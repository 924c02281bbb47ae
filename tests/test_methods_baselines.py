"""Baseline counterfactual methods (Latent Shift, SDEdit, random direction) on tiny random models.

The classifier is a linear function of mean intensity wrapped in the real `Classifier`: its threshold
can be placed so a flip is possible (or not), which makes flip and cost assertions exact.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tiny_generator import tiny_pipeline
from xcounter.attributes import load_attributes
from xcounter.classifiers.base import Classifier
from xcounter.disentangle.trajectories import DEFAULT_STRENGTHS, edited_embedding, swap_step_of, swap_step_points
from xcounter.explanation import Counterfactual
from xcounter.generators import SDGenerator
from xcounter.methods.base import CounterfactualMethod, EditContext
from xcounter.methods.latent_shift import LatentShift
from xcounter.methods.random_direction import RandomDirection, language_direction, random_direction
from xcounter.methods.sdedit import SDEdit, candidate_noise_steps, img2img, naive_img2img_search
from xcounter.methods.trajectory import TrajectoryMethod

STEPS = 8
PROMPT = "chest radiograph"
LOGIT_SCALE = 10.0


class MeanIntensity(torch.nn.Module):
    """logit = 10 * mean pixel value: brighter images are 'more positive'."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return LOGIT_SCALE * images.mean(dim=(1, 2, 3))[:, None]


@pytest.fixture(scope="module")
def setup():
    generator = SDGenerator(tiny_pipeline(image_channels=1, seed=0), steps=STEPS)
    scan = torch.linspace(0.1, 0.9, 16 * 16).reshape(1, 1, 16, 16)
    inversion = generator.invert(scan, PROMPT, steps=STEPS)
    with torch.no_grad():
        source = generator.embed([PROMPT])[0]
    return generator, inversion, source


def make_context(setup, threshold: float = 0.0, **overrides) -> EditContext:
    generator, inversion, source = setup
    classifier = Classifier(MeanIntensity(), ["Effusion"], [threshold])
    values = dict(classifier=classifier, generator=generator, attributes=load_attributes("cxr"),
                  inversion=inversion, source_embedding=source, target="Effusion", target_index=0, seed=0,
                  steps=STEPS, prefix=inversion.prefix)
    values.update(overrides)
    return EditContext(**values)


def logit_of(probability: float, threshold: float) -> float:
    return float(torch.logit(torch.tensor(probability, dtype=torch.float64))) + threshold


def assert_well_formed(cf: Counterfactual, method: str, channels: int = 1) -> None:
    assert cf.method == method
    assert len(cf.strengths) == len(cf.probabilities) == len(cf.film) >= 2
    assert cf.strengths[0] == 0.0 and cf.strengths == sorted(cf.strengths) and cf.strengths[-1] <= 1.0
    assert all(0.0 <= p <= 1.0 for p in cf.probabilities)
    assert cf.probability_before == pytest.approx(cf.probabilities[0])
    assert cf.image.shape == cf.film[0].shape == (16, 16, channels) and cf.image.dtype == np.float32
    np.testing.assert_allclose(cf.difference, cf.image - cf.film[0], atol=1e-6)
    assert cf.l1 == pytest.approx(float(np.abs(cf.difference).mean()), abs=1e-6)
    assert -1.0 <= cf.ssim <= 1.0
    if cf.flipped:
        assert 0.0 < cf.minimal_strength <= 1.0
        assert (cf.probability_before > 0.5) != (cf.probability_after > 0.5)
    else:
        assert cf.minimal_strength is None
        assert cf.probability_after == pytest.approx(cf.probabilities[-1], abs=1e-6)


def test_latent_shift_flips_a_decision_with_zero_nfe(setup):
    generator, inversion, _ = setup
    with torch.no_grad():
        source_mean = float(generator.decode(inversion.z_0).mean())
    # negative decision just below the threshold: brightening the scan a little flips it
    context = make_context(setup, threshold=LOGIT_SCALE * source_mean + 0.05)
    nfe_before = generator.nfe
    cf = LatentShift().generate(context, None, "add")
    assert generator.nfe == nfe_before and cf.nfe == 0
    assert_well_formed(cf, "latent_shift")
    assert cf.flipped and cf.attribute == "any"
    assert cf.probability_before < 0.5 < cf.probability_after
    assert cf.probabilities[1] > cf.probabilities[0]  # the gradient step moves towards the threshold
    # attribute-agnostic: another attribute reuses the same edit, recorded under its name, at no cost
    other = LatentShift().generate(context, context.attributes["pacemaker"], "remove")
    assert other.attribute == "pacemaker" and other.sign == "remove"
    method = LatentShift()
    first = method.generate(context, context.attributes["pacemaker"], "add")
    again = method.generate(context, context.attributes["chest_tube"], "add")
    assert again.attribute == "chest_tube" and again.nfe == 0 and again.minimal_strength == first.minimal_strength
    np.testing.assert_array_equal(again.image, first.image)
    np.testing.assert_allclose(other.image, cf.image, atol=1e-6)


def test_latent_shift_reports_no_flip_when_the_decision_is_far(setup):
    context = make_context(setup, threshold=-100.0)  # margin +100: no bounded shift crosses it
    cf = LatentShift(candidates=4, bisect_steps=2).generate(context, None, "remove")
    assert_well_formed(cf, "latent_shift")
    assert not cf.flipped


@pytest.mark.parametrize("method", [LatentShift(candidates=4, bisect_steps=2), SDEdit(bisect_steps=1),
                                    RandomDirection()], ids=lambda m: m.name)
def test_each_baseline_returns_a_well_formed_counterfactual(setup, method):
    assert isinstance(method, CounterfactualMethod)
    context = make_context(setup)
    attribute = context.attributes["pleural_effusion"]
    nfe_before = context.generator.nfe
    cf = method.generate(context, attribute, "add")
    assert_well_formed(cf, method.name)
    assert cf.attribute == "pleural_effusion"  # Latent Shift ignores it for the edit but records it
    assert cf.nfe == context.generator.nfe - nfe_before
    assert dataclasses.asdict(cf)["sign"] == "add"


def test_sdedit_nfe_grows_with_strength(setup):
    generator, inversion, source = setup
    costs = []
    for n in (1, 3, 6, STEPS):
        before = generator.nfe
        img2img(generator, inversion.prefix[-1], source, [n], steps=STEPS, seed=0)
        costs.append(generator.nfe - before)
    assert costs == [1, 3, 6, STEPS]
    context = make_context(setup, threshold=-100.0)  # never flips: no bisection re-runs
    weak = SDEdit(strengths=(0.25,)).generate(context, context.attributes["pleural_effusion"], "add")
    strong = SDEdit(strengths=(1.0,)).generate(context, context.attributes["pleural_effusion"], "add")
    assert weak.nfe == 2 and strong.nfe == STEPS


def test_naive_img2img_search_matches_sdedit_and_costs_more_than_the_shared_prefix_search(setup):
    generator, inversion, source = setup
    attribute = load_attributes("cxr")["pleural_effusion"]
    probe = SDEdit(bisect_steps=0).generate(make_context(setup), attribute, "add")
    # put the threshold halfway between the source and the strongest edit, so the decision flips
    threshold = 0.5 * (logit_of(probe.probabilities[0], 0.0) + logit_of(probe.probabilities[-1], 0.0))
    context = make_context(setup, threshold=threshold)

    ours = SDEdit(bisect_steps=3).generate(context, attribute, "add")
    naive = naive_img2img_search(context, attribute, "add", bisect_steps=3)
    assert_well_formed(naive, "sdedit_naive")
    assert ours.flipped and naive.flipped
    # identical semantics: diffusers' pipeline (1-channel VAE, latents passed in) gives the same images
    for a, b in zip(ours.film, naive.film):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert naive.minimal_strength == ours.minimal_strength and naive.nfe == ours.nfe

    candidates = candidate_noise_steps(context, DEFAULT_STRENGTHS, STEPS)
    assert candidates == [2, 4, 6, 8] and [round(s * STEPS) for s in naive.strengths[1:]] == candidates
    swap_steps = [swap_step_of(s, STEPS) for s in DEFAULT_STRENGTHS]
    direction = language_direction(context, attribute.name)
    before = generator.nfe
    swap_step_points(generator, inversion.z_T, source, edited_embedding(source, direction, "add", 1.0),
                     swap_steps, prefix=inversion.prefix)
    trajectory_nfe = generator.nfe - before
    assert trajectory_nfe == sum(candidates)  # the candidates themselves cost the same ...
    assert naive.nfe > trajectory_nfe  # ... but every bisection re-runs img2img (Bézier bisection is free)


def test_sdedit_bisection_respects_the_nfe_budget(setup):
    attribute = load_attributes("cxr")["pleural_effusion"]
    probe = SDEdit(bisect_steps=0).generate(make_context(setup), attribute, "add")
    threshold = 0.5 * (logit_of(probe.probabilities[0], 0.0) + logit_of(probe.probabilities[-1], 0.0))
    budget = 2 + 4 + 6 + 8  # exactly the candidates at 8 steps, nothing left for re-runs
    cf = SDEdit(bisect_steps=3).generate(make_context(setup, threshold=threshold, max_nfe=budget), attribute, "add")
    assert cf.flipped and cf.nfe == budget
    # a smaller budget picks the trajectory search's candidates for it: the strongest, then the cheapest
    small = SDEdit().generate(make_context(setup, threshold=-100.0, max_nfe=10), attribute, "add")
    assert small.strengths == [0.0, 0.25, 1.0] and small.nfe == 10


def test_random_direction_has_the_requested_norm_and_is_seeded(setup):
    like = torch.randn(77, 32, generator=torch.Generator().manual_seed(5)) * 3.0
    first, again, other = random_direction(like, 1), random_direction(like, 1), random_direction(like, 2)
    assert float(first.norm()) == pytest.approx(float(like.norm()), rel=1e-5)
    assert torch.equal(first, again) and not torch.allclose(first, other)

    context = make_context(setup)
    attribute = context.attributes["pacemaker"]
    method = RandomDirection()
    direction = method.direction(context, attribute)
    language = language_direction(context, "pacemaker")
    assert direction.shape == language.shape
    assert float(direction.norm()) == pytest.approx(float(language.norm()), rel=1e-5)
    assert abs(float(torch.nn.functional.cosine_similarity(direction.flatten(), language.flatten(), dim=0))) < 0.5
    other = method.direction(context, context.attributes["chest_tube"])
    assert not torch.allclose(direction / direction.norm(), other / other.norm())


def test_random_direction_runs_the_trajectory_search_with_only_the_direction_changed(setup):
    context = make_context(setup)
    attribute = context.attributes["pleural_effusion"]
    ours = TrajectoryMethod().generate(context, attribute, "add")
    control = RandomDirection().generate(context, attribute, "add")
    assert control.method == "random" and ours.method == "trajectory"
    assert control.strengths == ours.strengths and control.nfe == ours.nfe > 0
    np.testing.assert_allclose(control.film[0], ours.film[0], atol=1e-6)  # same source reconstruction
    assert not np.allclose(control.film[-1], ours.film[-1], atol=1e-4)  # a different edit
    assert context.directions == {}  # the caller's context is left alone
