"""Attribute directions as scikit-learn-style estimators (parameters in `__init__`, `fit` learns,
learned state ends in `_`).

- `LanguageDirections`: d_a = mean E(templates with positive phrases) - mean E(templates with
  negative phrases), the prompt-pair difference averaged over templates and phrase pairs as in
  pix2pix-zero; optionally orthogonalised against the other attributes and the anatomy directions
  so an edit of one attribute does not drag the others (or the patient) along.
- `PCADirections`: principal components of phrase-bank embeddings or of z_0 differences across
  seeds, to find factors nobody named; each is labelled by its nearest language direction.
- `GradientProjection`: the first-order margin change each attribute's latent edit would cause,
  ranking the attributes a decision is sensitive to before any counterfactual is run.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch

from xcounter.errors import XCounterError

if TYPE_CHECKING:
    from xcounter.attributes import AttributeSet
    from xcounter.classifiers import Classifier
    from xcounter.generators import SDGenerator

_EPS = 1e-12


def cosine_matrix(directions: Mapping[str, torch.Tensor]) -> np.ndarray:
    """Pairwise cosine similarity of flattened directions, in the mapping's order ([N, N])."""
    if not directions:
        return np.zeros((0, 0))
    flat = torch.stack([d.detach().reshape(-1).to(torch.float64).cpu() for d in directions.values()])
    norms = flat.norm(dim=1, keepdim=True).clamp_min(_EPS)
    unit = flat / norms
    return (unit @ unit.T).numpy()


def orthogonalize(directions: Mapping[str, torch.Tensor], against: Mapping[str, torch.Tensor] | None = None,
                  keep_norm: bool = True) -> dict[str, torch.Tensor]:
    """Gram-Schmidt on flattened vectors: `against` first (their span is removed from every direction),
    then `directions` in order, each made orthogonal to everything before it.

    `keep_norm` rescales each residual to its original length so an edit strength α means the same
    embedding distance before and after disentanglement. A direction lying in the span of earlier
    ones becomes zero.
    """
    basis: list[torch.Tensor] = []

    def residual(vector: torch.Tensor) -> torch.Tensor:
        for unit in basis:  # modified Gram-Schmidt: numerically stable
            vector = vector - (vector @ unit) * unit
        return vector

    for vector in (against or {}).values():
        rest = residual(vector.detach().reshape(-1).to(torch.float64))
        if rest.norm() > _EPS:
            basis.append(rest / rest.norm())
    result = {}
    for name, direction in directions.items():
        original = direction.detach().reshape(-1).to(torch.float64)
        rest = residual(original)
        norm = rest.norm()
        if norm > 1e-9 * max(float(original.norm()), 1.0):
            basis.append(rest / norm)
            if keep_norm:
                rest = rest / norm * original.norm()
        else:
            rest = torch.zeros_like(rest)
        result[name] = rest.reshape(direction.shape).to(direction.dtype)
    return result


class LanguageDirections:
    """Text-embedding directions per attribute from the vocabulary's positive/negative phrases.

    Parameters: `generator` (its `embed`), `attributes` (an AttributeSet), `names` (attributes to
    fit; default all non-anatomy ones), `disentangle` (orthogonalise against the others and the
    anatomy directions).
    Learned: `directions_` {name: Tensor[77, D]}, `raw_directions_` (before disentanglement),
    `anatomy_directions_`, `names_`, `cosine_before_` and `cosine_after_` ([N, N] over `names_`).
    """

    def __init__(self, generator: "SDGenerator", attributes: "AttributeSet", names: list[str] | None = None,
                 disentangle: bool = True):
        self.generator = generator
        self.attributes = attributes
        self.names = names
        self.disentangle = disentangle

    def _direction(self, name: str) -> torch.Tensor:
        attribute = self.attributes[name]
        if not attribute.positive or not attribute.negative:
            raise XCounterError(f"attribute '{name}' needs positive and negative phrases for a language direction")
        positive = [s for p in attribute.positive for s in self.attributes.sentences(p)]
        negative = [s for p in attribute.negative for s in self.attributes.sentences(p)]
        with torch.no_grad():
            embeddings = self.generator.embed(positive + negative).detach().float().cpu()
        return embeddings[: len(positive)].mean(0) - embeddings[len(positive):].mean(0)

    def fit(self) -> "LanguageDirections":
        names = self.names if self.names is not None else \
            [a.name for a in self.attributes if a.kind != "anatomy"]
        anatomy = [a.name for a in self.attributes.of_kind("anatomy") if a.name not in names]
        self.names_ = list(names)
        self.raw_directions_ = {name: self._direction(name) for name in names}
        self.anatomy_directions_ = {name: self._direction(name) for name in anatomy}
        self.cosine_before_ = cosine_matrix(self.raw_directions_)
        if self.disentangle:
            self.directions_ = orthogonalize(self.raw_directions_, against=self.anatomy_directions_)
        else:
            self.directions_ = dict(self.raw_directions_)
        self.cosine_after_ = cosine_matrix(self.directions_)
        return self

    def cosine_report(self) -> dict:
        """The cosine matrices in the form `Explanation.direction_cosine` stores."""
        return {"names": self.names_, "before": self.cosine_before_.round(4).tolist(),
                "after": self.cosine_after_.round(4).tolist()}


def phrase_bank_embeddings(generator: "SDGenerator", attributes: "AttributeSet") -> torch.Tensor:
    """Embeddings [N, 77, D] of every phrase of the vocabulary in every template (a PCA input)."""
    sentences = [s for a in attributes for p in (*a.negative, *a.positive) for s in attributes.sentences(p)]
    with torch.no_grad():
        return generator.embed(sentences).detach().float().cpu()


class PCADirections:
    """Principal directions of a sample of embeddings or latents (e.g. z_0 differences across seeds).

    Parameters: `n_components`, `seed` (for randomised solvers).
    `fit(samples [N, ...], reference={name: Tensor[...]})` learns `components_` [k, ...] (the
    sample's trailing shape), `explained_variance_ratio_`, `mean_`, and `labels_`: for each
    component the reference direction with the largest |cosine| (None without a reference), with
    that cosine in `label_cosines_`, so discovered factors can be named when they match one.
    """

    def __init__(self, n_components: int = 8, seed: int = 0):
        self.n_components = n_components
        self.seed = seed

    def fit(self, samples: torch.Tensor, reference: Mapping[str, torch.Tensor] | None = None) -> "PCADirections":
        from sklearn.decomposition import PCA

        samples = torch.as_tensor(samples).detach().float().cpu()
        flat = samples.reshape(samples.shape[0], -1).numpy().astype(np.float64)
        n_components = min(self.n_components, flat.shape[0], flat.shape[1])
        if n_components < 1:
            raise XCounterError("PCA needs at least one sample")
        pca = PCA(n_components=n_components, random_state=self.seed).fit(flat)
        shape = tuple(samples.shape[1:])
        self.components_ = torch.from_numpy(pca.components_).float().reshape(n_components, *shape)
        self.explained_variance_ratio_ = pca.explained_variance_ratio_
        self.mean_ = torch.from_numpy(pca.mean_).float().reshape(shape)
        self.labels_: list[str | None] = [None] * n_components
        self.label_cosines_ = np.zeros(n_components)
        if reference:
            names = list(reference)
            ref = np.stack([reference[n].detach().reshape(-1).double().cpu().numpy() for n in names])
            ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), _EPS)
            cosines = pca.components_ @ ref.T  # components are unit vectors
            best = np.abs(cosines).argmax(axis=1)
            self.labels_ = [names[j] for j in best]
            self.label_cosines_ = cosines[np.arange(n_components), best]
        return self


class GradientProjection:
    """First-order effect of each attribute edit on the classifier's target margin.

    With g = ∇_{z_0} margin_target(decode(z_0)) at the source latent and Δz_a = z_0(edited) - z_0(source)
    the latent direction of attribute a (from its swap-step trajectory endpoint), the score is
    g · Δz_a: the margin change a linearised classifier∘decoder predicts for the full edit.
    Parameters: `classifier`, `generator`, `target_index`, `residual` (added to every decode: the scan minus
    its reconstruction when counterfactuals are drawn onto the scan, so the gradient is the scan's own).
    `fit(z_source [1,4,h,w], deltas {name: Tensor[1 or none,4,h,w]})` learns `gradient_` and
    `scores_` {name: float}; `ranking_` lists names by |score|, largest first.
    """

    def __init__(self, classifier: "Classifier", generator: "SDGenerator", target_index: int,
                 residual: torch.Tensor | None = None):
        self.classifier = classifier
        self.generator = generator
        self.target_index = target_index
        self.residual = residual

    def fit(self, z_source: torch.Tensor, deltas: Mapping[str, torch.Tensor]) -> "GradientProjection":
        z = z_source.detach().clone().float().reshape(1, *z_source.shape[-3:]).requires_grad_(True)
        with torch.enable_grad():
            image = self.generator.decode(z)
            if self.residual is not None:
                image = image + self.residual.to(image)
            margin = self.classifier.margins(image)[0, self.target_index]
            (gradient,) = torch.autograd.grad(margin, z)
        self.gradient_ = gradient.detach()[0]
        self.margin_ = float(margin.detach())
        self.scores_ = {name: float((self.gradient_ * delta.detach().reshape(self.gradient_.shape).to(
            self.gradient_)).sum()) for name, delta in deltas.items()}
        self.ranking_ = sorted(self.scores_, key=lambda n: -abs(self.scores_[n]))
        return self


def seed_latents(generator: "SDGenerator", prompt: str, seeds: list[int], steps: int | None = None) -> torch.Tensor:
    """z_0 sampled from one prompt for several noise seeds [N, 4, h, w]: their spread (PCA input) is
    the variation the generator puts in without being asked, i.e. candidate unnamed factors."""
    from xcounter.generators import SwapSchedule

    with torch.no_grad():
        source = generator.embed([prompt])[0]
        latents = []
        for seed in seeds:
            z_T = torch.randn(1, *generator.latent_shape, generator=torch.Generator().manual_seed(int(seed)))
            steps_used = int(steps or generator.steps)
            schedule = SwapSchedule(source=source, edited=source, swap_step=steps_used)
            latents.append(generator.sample(z_T, [schedule], steps=steps_used))
    return torch.cat(latents)
