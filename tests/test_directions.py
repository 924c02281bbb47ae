"""Direction estimators: language directions, Gram-Schmidt disentanglement, PCA labels, gradient projection."""
import numpy as np
import pytest
import torch

from xcounter.attributes import load_attributes
from xcounter.disentangle.directions import (GradientProjection, LanguageDirections, PCADirections, cosine_matrix,
                                             orthogonalize, phrase_bank_embeddings)


@pytest.fixture(scope="module")
def generator():
    from tiny_generator import tiny_pipeline
    from xcounter.generators import SDGenerator
    return SDGenerator(tiny_pipeline(1, seed=0), steps=4)


@pytest.fixture(scope="module")
def cxr():
    return load_attributes("cxr")


def test_language_direction_is_mean_positive_minus_mean_negative(generator, cxr):
    fitted = LanguageDirections(generator, cxr, names=["chest_tube"], disentangle=False).fit()
    tube = cxr["chest_tube"]
    positive = generator.embed([s for p in tube.positive for s in cxr.sentences(p)])
    negative = generator.embed([s for p in tube.negative for s in cxr.sentences(p)])
    expected = positive.mean(0) - negative.mean(0)
    assert fitted.directions_["chest_tube"].shape == (77, generator.text_encoder.config.hidden_size)
    assert torch.allclose(fitted.directions_["chest_tube"], expected.detach(), atol=1e-5)


def test_default_names_exclude_anatomy_and_disentangle_makes_cosines_vanish(generator, cxr):
    fitted = LanguageDirections(generator, cxr).fit()
    anatomy = {a.name for a in cxr.of_kind("anatomy")}
    assert fitted.names_ and not anatomy & set(fitted.names_)
    assert set(fitted.anatomy_directions_) == anatomy
    n = len(fitted.names_)
    off_diagonal = ~np.eye(n, dtype=bool)
    assert np.abs(fitted.cosine_before_[off_diagonal]).max() > 0.1  # CLIP differences share a lot
    assert np.abs(fitted.cosine_after_[off_diagonal]).max() < 1e-4
    for name in fitted.names_:  # orthogonal to the anatomy directions too, with the original length
        after = fitted.directions_[name]
        for anatomy_direction in fitted.anatomy_directions_.values():
            assert abs(float(cosine_matrix({"a": after, "b": anatomy_direction})[0, 1])) < 1e-4
        assert float(after.norm()) == pytest.approx(float(fitted.raw_directions_[name].norm()), rel=1e-4)
    report = fitted.cosine_report()
    assert report["names"] == fitted.names_ and len(report["after"]) == n


def test_orthogonalize_is_gram_schmidt_in_order():
    directions = {"a": torch.tensor([1.0, 0.0, 0.0]), "b": torch.tensor([1.0, 1.0, 0.0]),
                  "c": torch.tensor([2.0, 2.0, 0.0])}
    result = orthogonalize(directions, keep_norm=False)
    assert torch.allclose(result["a"], directions["a"])  # the first keeps itself
    assert torch.allclose(result["b"], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(result["c"], torch.zeros(3))  # in the span of a and b
    against = orthogonalize({"x": torch.tensor([1.0, 1.0, 1.0])}, against={"y": torch.tensor([0.0, 0.0, 5.0])})
    assert torch.allclose(against["x"], torch.tensor([1.0, 1.0, 0.0]) / np.sqrt(2) * np.sqrt(3))


def test_pca_finds_and_labels_planted_factors():
    rng = torch.Generator().manual_seed(0)
    tube, heart = torch.zeros(4, 6), torch.zeros(4, 6)
    tube[0, :3], heart[2, 3:] = 1.0, 1.0
    weights = torch.randn(200, 2, generator=rng) * torch.tensor([3.0, 1.0])
    samples = weights[:, 0, None, None] * tube + weights[:, 1, None, None] * heart
    samples = samples + 0.01 * torch.randn(samples.shape, generator=rng)
    pca = PCADirections(n_components=3).fit(samples, reference={"chest_tube": tube, "cardiomegaly": heart})
    assert pca.components_.shape == (3, 4, 6)
    assert pca.labels_[:2] == ["chest_tube", "cardiomegaly"]
    assert abs(pca.label_cosines_[0]) > 0.99
    assert pca.explained_variance_ratio_[0] > 0.8 and pca.explained_variance_ratio_[:2].sum() > 0.99


def test_pca_over_phrase_bank(generator, cxr):
    bank = phrase_bank_embeddings(generator, cxr)
    language = LanguageDirections(generator, cxr, disentangle=False).fit()
    pca = PCADirections(n_components=4).fit(bank, reference=language.directions_)
    assert pca.components_.shape[1:] == bank.shape[1:]
    assert all(label in language.directions_ for label in pca.labels_)
    assert np.all(np.diff(pca.explained_variance_ratio_) <= 1e-12)


class _Brightness(torch.nn.Module):
    """margin = 10 * mean intensity - 5: its gradient w.r.t. the image is a positive constant."""

    labels = ["Bright"]

    def margins(self, images):
        return 10 * images.mean(dim=(1, 2, 3)).unsqueeze(1) - 5


def test_gradient_projection_matches_finite_difference(generator):
    z = torch.randn(1, *generator.latent_shape, generator=torch.Generator().manual_seed(1))
    brighter = 0.05 * torch.randn(1, *generator.latent_shape, generator=torch.Generator().manual_seed(2))
    classifier = _Brightness()
    projection = GradientProjection(classifier, generator, 0).fit(z, {"edit": brighter, "none": torch.zeros_like(z)})
    with torch.no_grad():
        change = float(classifier.margins(generator.decode(z + brighter))[0, 0] -
                       classifier.margins(generator.decode(z))[0, 0])
    assert projection.scores_["none"] == 0.0
    assert projection.scores_["edit"] == pytest.approx(change, rel=0.2, abs=1e-3)
    assert projection.ranking_[0] == "edit"


def test_pca_over_seed_latents(generator):
    from xcounter.disentangle.directions import seed_latents

    latents = seed_latents(generator, "chest radiograph", seeds=[0, 1, 2, 3, 4], steps=2)
    assert latents.shape == (5, *generator.latent_shape)
    assert not torch.allclose(latents[0], latents[1])
    pca = PCADirections(n_components=3).fit(latents - latents.mean(0))
    assert pca.components_.shape == (3, *generator.latent_shape)
    assert pca.labels_ == [None, None, None]  # nothing to name them by without a reference
