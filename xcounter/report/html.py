"""The HTML report card: one self-contained file a clinician or auditor can open, print or archive.

Reads an `Explanation` and never recomputes. Everything the page shows is embedded (inline CSS,
PNG data: URIs); no scripts, fonts or URLs, so it opens offline and leaks nothing. jinja2's
autoescaping treats labels, attribute names and file names as the untrusted text they are.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, StrictUndefined

from xcounter import __version__
from xcounter.explanation import AttributeResult, Counterfactual, Explanation
from xcounter.report import plots
from xcounter.utils.atomic import write_text_atomic

#: mean absolute reconstruction error (image units, [0, 1]) above which the counterfactuals are untrustworthy
#: (the engine's own warning uses the same bound)
POOR_RECONSTRUCTION_ERROR = 0.05
#: structural similarity below which the reconstruction is untrustworthy
POOR_RECONSTRUCTION_SSIM = 0.5
#: a shortcut flag whose edit had to reach at least this strength is shown with a caution, not dropped. Why: near
#: full strength a generator draws most besides the attribute (phantom-skin scribbled ink and pale patches round
#: the lesion): while ink could be added anywhere off the lesion, every false alarm on the skin faithfulness
#: benchmark's clean and rho-0.5 classifiers came at 0.81-0.97, but flags the renderer confirms reach 0.94 too, so a
#: cap would drop true ones (docs/CONTRACTS.md)
NEAR_FULL_STRENGTH = 0.8

VERDICT_STYLE = {
    "shortcut": ("v-shortcut", "Shortcut alert"),
    "drives": ("v-drives", "Drives the decision"),
    "mediated": ("v-mediated", "Mediated"),
    "unconfirmed": ("v-unconfirmed", "Unconfirmed shortcut"),
    "does not drive": ("v-none", "Does not drive"),
}
ATTRIBUTION_NAMES = {"integrated_gradients": "Integrated Gradients", "gradcam": "Grad-CAM"}


def _environment() -> Environment:
    return Environment(loader=PackageLoader("xcounter.report", "templates"), autoescape=True,
                       undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render_html(explanation: Explanation) -> str:
    """The full report card as one HTML string (rendered completely before anything is written)."""
    return _environment().get_template("card.html.j2").render(**card_context(explanation))


def write_html(explanation: Explanation, path: str | Path) -> Path:
    """Render, then write atomically: an error while rendering leaves no file, not even a partial one."""
    html = render_html(explanation)
    write_text_atomic(path, html)
    return Path(path)


# -- view model --------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "–" if not math.isfinite(float(value)) else f"{float(value):.{digits}g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(item, digits) for item in value) or "–"
    if isinstance(value, dict):  # e.g. the generator's own settings per attribute kind; nested ones in brackets
        parts = [f"({_fmt(item, digits)})" if isinstance(item, dict) else _fmt(item, digits)
                 for item in value.values()]
        return "; ".join(f"{str(key).replace('_', ' ')}: {part}" for key, part in zip(value, parts)) or "–"
    return str(value)


def _figure(png: bytes, alt: str, caption: str = "") -> dict:
    return {"uri": plots.data_uri(png), "alt": alt, "caption": caption}


def is_phantom(explanation: Explanation) -> bool:
    """Phantom models are named 'phantom-...' (generators) or 'cxr-...'/'skin-...' zoo files."""
    names = [str(explanation.generator.get("name", "")), str(explanation.classifier.get("name", ""))]
    return any("phantom" in name.lower() for name in names)


def poor_reconstruction(explanation: Explanation) -> str | None:
    """A plain sentence when the generator could not reproduce the scan well enough to trust edits of it."""
    error, ssim = explanation.reconstruction_error, explanation.reconstruction_ssim
    if error is not None and math.isfinite(error) and error > POOR_RECONSTRUCTION_ERROR:
        return (f"The generator reproduces this scan poorly (mean error {error:.3f} > {POOR_RECONSTRUCTION_ERROR}); "
                "the counterfactuals below are edits of a different-looking image and should not be trusted.")
    if ssim is not None and math.isfinite(ssim) and ssim < POOR_RECONSTRUCTION_SSIM:
        return (f"The generator reproduces this scan poorly (SSIM {ssim:.2f} < {POOR_RECONSTRUCTION_SSIM}); "
                "the counterfactuals below should not be trusted.")
    return None


def needed_near_full_strength(result: AttributeResult) -> bool:
    """Whether a shortcut flag rests on an edit of `NEAR_FULL_STRENGTH` or more (shown with a caution)."""
    return (result.verdict == "shortcut" and result.minimal_strength is not None
            and result.minimal_strength >= NEAR_FULL_STRENGTH)


def reconstruction_already_warned(explanation: Explanation) -> bool:
    """True when the engine's warnings already speak of the reconstruction (avoid saying it twice)."""
    return any("reconstruction error" in str(w).lower() for w in explanation.warnings)


def unedited_name(explanation: Explanation) -> str:
    """What the counterfactuals were drawn onto and are compared with ("scan" | "reconstruction";
    `Explanation.settings["anchor"]`, explanations before it existed: the reconstruction)."""
    return "scan" if explanation.settings.get("anchor") == "scan" else "reconstruction"


def _sentence(result: AttributeResult, best: Counterfactual | None, positive: bool | None,
              unedited: str = "reconstruction") -> str:
    name = result.attribute.replace("_", " ")
    if best is None:
        return f"No counterfactual was generated for {name}."
    verb = "Removing" if best.sign == "remove" else "Adding"
    if result.flipped and result.minimal_strength is not None:
        change = ""
        if positive is not None:
            change = f" from {'positive' if positive else 'negative'} to {'negative' if positive else 'positive'}"
        sentence = f"{verb} {name} flips {result.target}{change} at edit strength {result.minimal_strength:.2f} "
        probabilities = f"{best.probability_before:.2f} → {best.probability_after:.2f}"
        kept = f", keeping {best.parts_kept} of its {best.parts} changed parts" if best.pruned and best.parts else ""
        if kept and best.filled:
            kept += ", refilled at the levels of the image around them"
        if best.shown_past_crossing:
            sentence += (f"(shown: the weakest generator sample found past it, strength "
                         f"{best.image_strength:.2f}{kept}, probability {probabilities}).")
        elif kept:
            sentence += f"(shown{kept}, probability {probabilities})."
        else:
            sentence += f"(probability {probabilities})."
        if result.verdict == "mediated" and result.mediator and result.mediated_by == "pixels":
            mediator = result.mediator.replace("_", " ")
            sentence += (f" It flips {result.target} only through pixels that removing {mediator} also needs, "
                         f"changed the same way: the change is credited to the removal of {mediator}.")
        elif result.verdict == "mediated" and result.mediator:
            mediator = result.mediator.replace("_", " ")
            sentence += (f" The edit also changed {mediator}, whose own edit flips {result.target}: "
                         f"the change is credited to {mediator}.")
        if result.verdict == "shortcut" and result.core is not None and result.core.confirmed:
            sentence += (f" Confirmed on the edit's own pixels: pasting only its strongest change "
                         f"({result.core.share:.1%} of the image) onto the {unedited} flips it too "
                         f"(probability {result.core.probability:.2f})")
            if result.core.strongest_probability is not None:
                sentence += (f", and so does the {name} drawn in full "
                             f"(probability {result.core.strongest_probability:.2f})")
            sentence += "."
        if needed_near_full_strength(result):
            sentence += (f" It needed an edit near full strength, where the generator draws the most besides the "
                         f"{name}: look at the counterfactual before trusting this flag.")
        if result.verdict == "unconfirmed" and result.core is not None and not result.core.flipped:
            sentence += (f" Pasting only the edit's strongest pixels ({result.core.share:.1%} of the image) onto the "
                         f"{unedited} leaves the decision (probability {result.core.probability:.2f}): the flip "
                         f"comes from what the generator changed around the {name}, not from the {name} itself.")
        elif result.verdict == "unconfirmed" and result.core is not None:
            sentence += (f" The strongest edit along the trajectory, the {name} drawn in full, leaves the decision "
                         f"(probability {result.core.strongest_probability:.2f}): the flip comes from the "
                         f"generator's half-drawn {name} part-way, not from the {name} itself.")
        return sentence
    return (f"No edit of {name} up to full strength flips {result.target} "
            f"(largest change: probability {best.probability_before:.2f} → {best.probability_after:.2f}).")


def _film(counterfactual: Counterfactual, attribute: str) -> list[dict]:
    frames = counterfactual.film or []
    aligned = len(frames) == len(counterfactual.strengths) == len(counterfactual.probabilities)
    out = []
    for index, frame in enumerate(frames):
        if aligned:
            strength, probability = counterfactual.strengths[index], counterfactual.probabilities[index]
            caption = f"s {strength:.2f} · p {probability:.2f}"
        else:
            strength = index / max(len(frames) - 1, 1)
            caption = f"frame {index + 1}"
        alt = f"{attribute} {counterfactual.sign} trajectory, frame {index + 1} of {len(frames)}"
        if aligned:
            alt += f", strength {strength:.2f}, target probability {probability:.2f}"
        out.append(_figure(plots.png_bytes(frame), alt, caption))
    return out


def _counterfactual_view(result: AttributeResult, best: Counterfactual, unedited: str = "reconstruction") -> dict:
    attribute, target = result.attribute, result.target
    where = f"at strength {best.minimal_strength:.2f}" if best.flipped and best.minimal_strength is not None \
        else "at the strongest edit (no flip)"
    if best.shown_past_crossing:
        where = f"at strength {best.image_strength:.2f}; the decision changes at {best.minimal_strength:.2f}"
    view: dict[str, Any] = {
        "method": best.method, "sign": best.sign, "nfe": best.nfe,
        "probability_before": _fmt(best.probability_before, 2), "probability_after": _fmt(best.probability_after, 2),
        "delta": f"{best.delta_probability:+.2f}", "l1": _fmt(best.l1), "ssim": _fmt(best.ssim),
        "cfrt": _fmt(best.cfrt), "image": None, "difference": None, "difference_scale": None,
        "oracle_change": [(k, f"{v:+.2f}") for k, v in sorted((best.oracle_change or {}).items())
                          if v is not None and math.isfinite(v)],
        "film": _film(best, attribute),
        "plot": _figure(plots.probability_plot_png(best.strengths, best.probabilities, best.minimal_strength
                                                   if best.flipped else None, f"{target}: {best.sign} {attribute}"),
                        f"Plot of the {target} probability against edit strength when {attribute} is "
                        f"{'removed' if best.sign == 'remove' else 'added'}, with the decision threshold at 0.5"
                        + (f" and the flip at strength {best.minimal_strength:.2f}" if best.flipped
                           and best.minimal_strength is not None else ", never crossed")),
    }
    if best.image is not None:
        view["image"] = _figure(plots.png_bytes(best.image),
                                f"Counterfactual scan with {attribute} "
                                f"{'removed' if best.sign == 'remove' else 'added'} {where}",
                                f"Counterfactual ({best.sign} {where})")
    if best.difference is not None:
        png, scale = plots.difference_png(best.difference, best.region)
        confined = best.region is not None
        view["difference"] = _figure(png, f"Difference heat map of the {attribute} counterfactual minus the "
                                          f"{unedited}; red brighter, blue darker, largest change {scale:.3f}"
                                          + ("; the grey outline bounds where the edit could act" if confined else ""),
                                     f"Counterfactual − {unedited}" + (" (edit confined to the outlined region)"
                                                                          if confined else ""))
        view["difference_scale"] = f"{scale:.3f}"
    view["whole"] = _whole_sample_figure(best, attribute, unedited)
    view["core"] = _core_figure(result, best, unedited)
    return view


def _whole_sample_figure(best: Counterfactual, attribute: str, unedited: str = "reconstruction") -> dict | None:
    """What the generator drew in all, when the counterfactual shown keeps only the parts the decision needs
    (`xcounter.edit_pruning`): the reader sees the side effects that were left out, and that they were."""
    if not best.pruned or best.image is None or best.difference is None:
        return None
    png, scale = plots.difference_png(best.sample - (best.image - best.difference), best.region)
    parts = f"{best.parts_kept} of its {best.parts} changed parts" if best.parts else "part of it"
    return _figure(png, f"Difference heat map of the generator's whole {attribute} sample minus the {unedited}; "
                        f"the counterfactual shown keeps {parts}, which alone change the decision; red brighter, "
                        f"blue darker, largest change {scale:.3f}",
                   f"Whole generator edit − {unedited}: the decision needs {parts}")


def _core_figure(result: AttributeResult, best: Counterfactual, unedited: str = "reconstruction") -> dict | None:
    """The image a shortcut flag was re-asked on (`xcounter.confirmation`): the unedited image with only the edit's
    strongest pixels, so the reader sees what the classifier saw when the device alone was drawn."""
    from xcounter.confirmation import core_image

    core = result.core
    if core is None or best.image is None or best.difference is None:
        return None
    image, _ = core_image(best.image - best.difference, best.whole_image, core.fraction)
    outcome = "flips" if core.flipped else "does not flip"
    return _figure(plots.png_bytes(image),
                   f"The {unedited} with only the {result.attribute} edit's strongest pixels "
                   f"({core.share:.1%} of the image); the {result.target} decision {outcome} "
                   f"(probability {core.probability:.2f})",
                   f"Strongest change only: {outcome} (p {core.probability:.2f})")


def _attribution_views(explanation: Explanation, target: str) -> list[dict]:
    maps = explanation.attributions.get(target, {}) or {}
    views = []
    for method, saliency in maps.items():
        if saliency is None:
            continue
        saliency = np.asarray(saliency, dtype=np.float32)
        if saliency.ndim == 3:
            saliency = saliency.sum(axis=-1)
        signed = bool((saliency < 0).any())
        name = ATTRIBUTION_NAMES.get(method, method)
        empty = not np.any(saliency)
        views.append(_figure(plots.overlay_png(explanation.image, saliency, signed),
                             f"{name} attribution map for {target} over the input scan"
                             + (" (all zero)" if empty else ""),
                             name + (" (no signal)" if empty else "")))
    return views


def _result_view(explanation: Explanation, result: AttributeResult, rank: int, anchor: str,
                 positive: bool | None) -> dict:
    css, label = VERDICT_STYLE.get(result.verdict, ("v-none", result.verdict))
    best = result.best
    return {
        "rank": rank, "anchor": anchor, "attribute": result.attribute, "kind": result.kind,
        "verdict": result.verdict, "verdict_class": css, "verdict_label": label, "flipped": result.flipped,
        "minimal_strength": "–" if result.minimal_strength is None else f"{result.minimal_strength:.2f}", "sign": result.sign or (best.sign if best else None),
        "gradient_sensitivity": _fmt(result.gradient_sensitivity),
        "delta": f"{best.delta_probability:+.2f}" if best is not None else "–",
        "sentence": _sentence(result, best, positive, unedited_name(explanation)),
        "counterfactual": _counterfactual_view(result, best, unedited_name(explanation)) if best is not None else None,
    }


def _largest_off_diagonal(matrix) -> float | None:
    try:
        values = np.abs(np.asarray(matrix, dtype=np.float64))
    except (TypeError, ValueError):
        return None
    if values.ndim != 2 or values.shape[0] != values.shape[1] or values.shape[0] < 2:
        return None
    np.fill_diagonal(values, 0.0)
    return float(np.nanmax(values))


def direction_note(explanation: Explanation) -> str | None:
    """How entangled the attribute directions were, before and after orthogonalisation, in one sentence."""
    report = explanation.direction_cosine or {}
    before, after = _largest_off_diagonal(report.get("before")), _largest_off_diagonal(report.get("after"))
    if before is None:
        return None
    text = f"The largest |cosine| between two attribute directions was {before:.2f}"
    return text + (f" before and {after:.2f} after orthogonalisation." if after is not None else ".")


def _targets(explanation: Explanation) -> list[str]:
    targets = list(explanation.targets)
    for result in explanation.results:
        if result.target not in targets:
            targets.append(result.target)
    return targets


def card_context(explanation: Explanation) -> dict:
    """Everything the template shows, as plain strings, numbers and data: URIs."""
    source_name = str(explanation.source.get("name") or explanation.source.get("file") or "scan")
    predictions = []
    targets = _targets(explanation)
    for prediction in explanation.predictions:
        predictions.append({
            "label": prediction.label, "probability": _fmt(prediction.probability, 3),
            "logit": _fmt(prediction.logit, 3), "threshold": _fmt(prediction.threshold, 3),
            "positive": prediction.positive, "explained": prediction.label in targets,
            "bar": max(0.0, min(100.0, 100.0 * float(prediction.probability)))
            if math.isfinite(float(prediction.probability)) else 0.0,
        })
    target_views = []
    for t_index, target in enumerate(targets):
        try:
            prediction = explanation.prediction(target)
        except KeyError:
            prediction = None
        positive = prediction.positive if prediction else None
        results = [_result_view(explanation, result, rank, f"t{t_index}-r{rank}", positive)
                   for rank, result in enumerate(explanation.ranking_for(target), start=1)]
        target_views.append({
            "name": target, "anchor": f"t{t_index}", "results": results,
            "positive": positive, "probability": _fmt(prediction.probability, 3) if prediction else "–",
            "attributions": _attribution_views(explanation, target),
            "gradcam_missing": bool(explanation.attributions.get(target))
            and "gradcam" not in explanation.attributions.get(target, {}),
            "shortcuts": [f"{'removing' if r['sign'] == 'remove' else 'adding'} {r['attribute']} "
                          f"(edit strength {r['minimal_strength']})" for r in results if r["verdict"] == "shortcut"],
        })
    versions = {"xcounter": __version__, **{str(k): str(v) for k, v in explanation.versions.items()}}
    error, ssim = explanation.reconstruction_error, explanation.reconstruction_ssim
    return {
        "title": f"xcounter report – {source_name}",
        "source_name": source_name,
        "source": _source_facts(explanation.source),
        "classifier": _identity(explanation.classifier),
        "generator": _identity(explanation.generator),
        "versions": sorted(versions.items()), "xcounter_version": versions["xcounter"],
        "seed": explanation.seed, "created": explanation.created or "–", "nfe": explanation.nfe,
        "prompt": explanation.prompt,
        "settings": [(str(k).replace("_", " "), _fmt(v)) for k, v in sorted(explanation.settings.items())],
        "inversion": INVERSION_NAMES.get(str(explanation.settings.get("inversion", "ddim")), "DDIM"),
        "scan": _figure(plots.png_bytes(explanation.image), f"Input scan {source_name} as the generator sees it",
                        "Input scan"),
        "reconstruction": _figure(plots.png_bytes(explanation.reconstruction),
                                  f"The generator's reconstruction of {source_name} after inversion",
                                  "Generator reconstruction"),
        "reconstruction_error": _fmt(error, 3), "reconstruction_ssim": _fmt(ssim, 3),
        "unedited": unedited_name(explanation),
        "poor_reconstruction": poor_reconstruction(explanation),
        "reconstruction_warned": reconstruction_already_warned(explanation),
        "warnings": list(explanation.warnings),
        "predictions": predictions,
        "targets": target_views,
        "phantom": is_phantom(explanation),
        "pruned": any(c.pruned for r in explanation.results for c in r.counterfactuals),
        "direction_note": direction_note(explanation),
        "schema_version": explanation.schema_version,
        "diverging_legend": plots.data_uri(plots.colorbar_png(plots.DIVERGING, signed=True)),
    }


#: how the card names the inversion (`Explanation.settings["inversion"]`; explanations before it existed: DDIM)
INVERSION_NAMES = {"ddim": "DDIM", "ddpm": "edit-friendly DDPM inversion, which keeps the noise of the scan"}


def _identity(identity: dict) -> dict:
    """Name, SHA-256 (of the file, or of the configuration for generator folders) and safe extra facts."""
    skip = ("name", "sha256", "config_sha256", "labels", "thresholds", "targets", "source")
    extra = [(str(k), _fmt(v)) for k, v in identity.items()
             if k not in skip and v is not None and not isinstance(v, (dict, list))]
    if identity.get("sha256"):
        digest, digest_label = str(identity["sha256"]), "SHA-256"
    elif identity.get("config_sha256"):
        digest, digest_label = str(identity["config_sha256"]), "config SHA-256"
    else:
        digest, digest_label = "–", "SHA-256"
    return {"name": str(identity.get("name") or "unknown"), "sha256": digest, "digest_label": digest_label,
            "extra": extra}


def _source_facts(source: dict) -> list[tuple[str, str]]:
    """The scan's safe facts (already allowlisted by xcounter.io), nested metadata flattened."""
    facts = []
    for key, value in source.items():
        if key == "name":
            continue
        if isinstance(value, dict):
            facts += [(str(k), _fmt(v)) for k, v in value.items() if not isinstance(v, (dict, list))]
        elif not isinstance(value, list):
            facts.append((str(key), _fmt(value)))
    return facts
