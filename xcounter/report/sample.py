"""A synthetic Explanation with every verdict, for previewing the report card and testing renderers
without any model (`python -m xcounter.report.sample out.html`)."""
from __future__ import annotations

import sys

import numpy as np

from xcounter.explanation import AttributeResult, CoreCheck, Counterfactual, Explanation, Prediction


def _blob(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * radius ** 2)).astype(np.float32)


def _counterfactual(rng: np.random.Generator, base: np.ndarray, attribute: str, sign: str, flips: bool,
                    probability_before: float) -> Counterfactual:
    size = base.shape[0]
    strengths = [round(float(s), 3) for s in np.linspace(0.0, 1.0, 6)]
    direction = -1.0 if probability_before > 0.5 else 1.0
    reach = 0.7 if flips else 0.2
    probabilities = [float(np.clip(probability_before + direction * reach * s ** 1.5, 0, 1)) for s in strengths]
    minimal = None
    if flips:
        crossing = [s for s, p in zip(strengths, probabilities) if (p > 0.5) != (probability_before > 0.5)]
        minimal = crossing[0] if crossing else None
    change = (0.35 if sign == "add" else -0.35) * _blob(size, tuple(rng.uniform(0.3, 0.7, 2)), 0.08)[..., None]
    film = [np.clip(base + s * change, 0, 1).astype(np.float32) for s in strengths]
    at = strengths.index(minimal) if minimal is not None else len(strengths) - 1
    return Counterfactual(
        attribute=attribute, sign=sign, method="trajectory", strengths=strengths, probabilities=probabilities,
        minimal_strength=minimal, flipped=minimal is not None, probability_before=probability_before,
        probability_after=probabilities[at], image=film[at], difference=(film[at] - base).astype(np.float32),
        film=film, l1=float(np.abs(film[at] - base).mean()), ssim=0.93, oracle_change={"pacemaker": 0.01},
        cfrt=0.8, direction_cosine=[1.0, 0.97, 0.95], nfe=40,
        # removals are confined to a region around what they remove, as the explainer's defaults do
        region=(np.abs(change[..., 0]) > 0.02).astype(np.float32) if sign == "remove" else None)


def sample_explanation(seed: int = 0, size: int = 48, label: str = "Pneumothorax",
                       attribute_names: tuple[str, ...] = ("chest_tube", "pneumothorax", "pacemaker"),
                       source_name: str = "scan.png") -> Explanation:
    """A small explanation: a shortcut, a driving and a non-driving attribute, with images and maps; a fourth
    name gets a flip mediated by the driving one, a fifth an unconfirmed shortcut."""
    rng = np.random.default_rng(seed)
    body = 0.15 + 0.6 * _blob(size, (0.5, 0.5), 0.3)
    scan = np.clip(body + 0.03 * rng.standard_normal((size, size)), 0, 1).astype(np.float32)[..., None]
    reconstruction = np.clip(scan + 0.01 * rng.standard_normal(scan.shape), 0, 1).astype(np.float32)
    kinds = ["device", "pathology", "device", "device", "device"]
    verdicts = ["shortcut", "drives", "does not drive", "mediated", "unconfirmed"]
    results = []
    for index, name in enumerate(attribute_names):
        kind, verdict = kinds[index % len(kinds)], verdicts[index % len(verdicts)]
        flips = verdict != "does not drive"
        sign = "remove" if index % 2 == 0 else "add"
        counterfactual = _counterfactual(rng, reconstruction, name, sign, flips, 0.82)
        if verdict == "shortcut":  # shown pruned: the generator's sample also brightened a corner it did not need
            counterfactual.sample = np.clip(counterfactual.image + 0.2 * _blob(size, (0.15, 0.15), 0.05)[..., None],
                                            0, 1).astype(np.float32)
            counterfactual.parts, counterfactual.parts_kept = 2, 1
            counterfactual.filled = sign == "remove"  # a removal's kept part refilled at the levels around it
            if counterfactual.filled:
                counterfactual.kept = (np.abs(counterfactual.difference).max(axis=-1) > 0.01).astype(np.float32)
        results.append(AttributeResult(
            target=label, attribute=name, kind=kind, verdict=verdict,
            minimal_strength=counterfactual.minimal_strength, flipped=counterfactual.flipped, sign=sign,
            gradient_sensitivity=float(rng.uniform(-1, 1)), counterfactuals=[counterfactual],
            mediator=attribute_names[1] if verdict == "mediated" and len(attribute_names) > 1 else None,
            core=CoreCheck(fraction=0.15, share=0.02, probability=0.7, flipped=False)
            if verdict == "unconfirmed" else None))
    predictions = [Prediction(label, 0.82, 1.9, 0.4, True), Prediction("Effusion", 0.21, -1.2, 0.1, False),
                   Prediction("Cardiomegaly", 0.47, -0.1, 0.02, False)]
    ig = (_blob(size, (0.4, 0.6), 0.1) - _blob(size, (0.6, 0.3), 0.1)).astype(np.float32)
    return Explanation(
        image=scan, reconstruction=reconstruction, reconstruction_error=0.012, reconstruction_ssim=0.94,
        prompt="PA chest radiograph. Chest tube.", predictions=predictions, results=results, seed=seed, nfe=240,
        targets=[label], source={"name": source_name, "Rows": size, "Columns": size},
        classifier={"name": "cxr-shortcut.pt", "sha256": "ab" * 32, "domain": "cxr"},
        generator={"name": "phantom-cxr", "sha256": "cd" * 32, "steps": 10},
        settings={"steps": 10, "swap_steps": [10, 8, 6, 4, 2, 0], "guidance_scale": 1.0},
        attributions={label: {"integrated_gradients": ig, "gradcam": np.clip(ig, 0, 1)}},
        direction_cosine={"names": list(attribute_names),
                          "before": [[1.0, 0.62, 0.1], [0.62, 1.0, 0.2], [0.1, 0.2, 1.0]],
                          "after": [[1.0, 0.0, 0.01], [0.0, 1.0, 0.0], [0.01, 0.0, 1.0]]},
        warnings=[], versions={"torch": "2.14.1", "diffusers": "0.42.1"}, created="2026-11-24T18:00:00Z")


if __name__ == "__main__":  # preview: python -m xcounter.report.sample card.html
    from xcounter.report.html import write_html
    print(write_html(sample_explanation(), sys.argv[1] if len(sys.argv) > 1 else "sample.xcounter.html"))
