"""`Explainer`: one scan in, one `Explanation` out.

The order of work follows the cost: everything shared is computed once per scan (inversion, the
source denoising prefix, language directions), then the UNet is paid once per attribute and
sign (trajectories do not depend on the target label), then everything per target uses the VAE
and the classifier only (gradient ranking, minimal-flip search, verdicts).
"""
from __future__ import annotations

import importlib
import math
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from xcounter.attributes import AttributeSet, load_attributes
from xcounter.confirmation import confirm_shortcuts
from xcounter.disentangle.directions import GradientProjection, LanguageDirections
from xcounter.disentangle.trajectories import (DEFAULT_ALPHA, DEFAULT_STRENGTHS, resolve_edit_guidance,
                                               resolve_edit_settings, select_swap_steps)
from xcounter.edit_pruning import PART_FRACTIONS
from xcounter.errors import XCounterError
from xcounter.explanation import AttributeResult, Explanation, Prediction, verdict_of
from xcounter.mediation import apply_mediation
from xcounter.methods import get_method
from xcounter.methods.base import SIGNS, EditContext
from xcounter.methods.trajectory import (DEFAULT_MAX_NFE, DEFAULT_REFINE_NFE, LOCALISED_SIGNS,
                                         TrajectoryMethod, localised_signs, to_hwc)
from xcounter.same_change import apply_removed_causes
from xcounter.search import DEFAULT_FLIP_MARGIN, DEFAULT_TOLERANCE, checked_anchor

if TYPE_CHECKING:
    from xcounter.classifiers import Classifier
    from xcounter.generators import SDGenerator

#: above this mean |reconstruction - scan| the counterfactuals may show the generator, not the scan
RECONSTRUCTION_WARNING = 0.05
#: with an oracle, an attribute whose reading on the reconstruction differs from the scan's by this much is named
#: in a warning: every counterfactual starts from the reconstruction, so what it lost (a nodule, on 2 of 10
#: phantom CXR scans) is missing from every "before" image too (readings are probabilities or values in [0, 1])
RECONSTRUCTION_ORACLE_CHANGE = 0.25
#: the engine's UNet budget: average sample-evaluations per examined attribute
NFE_PER_ATTRIBUTE_BUDGET = 150


def source_prompt(attributes: AttributeSet, predictions: Sequence[Prediction]) -> str:
    """A report-like prompt from the positive findings: the first positive phrase of every pathology
    attribute whose label is positive, in the first template; the neutral prompt when none is."""
    positive = {p.label for p in predictions if p.positive}
    phrases = [a.positive[0] for a in attributes
               if a.kind == "pathology" and positive.intersection(a.labels) and a.positive]
    if not phrases or not attributes.templates:
        return attributes.neutral_prompt
    findings = ". ".join(p[:1].upper() + p[1:] for p in phrases)
    return attributes.templates[0].format(phrase=findings)


def default_targets(predictions: Sequence[Prediction]) -> list[str]:
    """Every positive label, and the negative one closest to its threshold (the highest margin)."""
    targets = [p.label for p in predictions if p.positive]
    negatives = [p for p in predictions if not p.positive]
    if negatives:
        targets.append(max(negatives, key=lambda p: p.logit - p.threshold).label)
    return targets


def _versions() -> dict[str, str]:
    import xcounter

    versions = {"xcounter": xcounter.__version__, "torch": torch.__version__}
    for name in ("diffusers", "transformers"):
        try:
            versions[name] = importlib.import_module(name).__version__
        except ImportError:  # pragma: no cover - both are dependencies
            versions[name] = "missing"
    return versions


def _attribution_module():
    """`xcounter.attribution` when installed with its dependencies; None otherwise."""
    try:
        return importlib.import_module("xcounter.attribution")
    except ModuleNotFoundError as exc:
        if exc.name in ("xcounter.attribution", "captum"):
            return None
        raise


class Explainer:
    """Explains a classifier's decisions on scans with counterfactual attribute edits.

    Args:
        classifier: an `xcounter.classifiers.Classifier`.
        generator: an `xcounter.generators.SDGenerator`.
        attributes: "cxr" | "skin" | a YAML path | an AttributeSet.
        oracle: an attribute oracle (object with `measure`, or a name/path for `load_oracle`) for
            `oracle_change` and CFRT; None = no ground truth.
        steps: DDIM steps (default: the generator's).
        swap_steps: explicit candidate swap steps λ (default: strengths 0.25, 0.5, 0.75, 1.0 within the budget).
        method: "trajectory" (ours) | "latent_shift" | "sdedit" | "random", or a method object.
        attribution: also store captum maps (Integrated Gradients, Grad-CAM) per target.
        alpha: edit scale of the language direction (E(src) + sign·α·d_a); None = the generator's own for the
            attribute's kind (`kind_edits` in its xcounter.json), else 2.
        max_nfe: UNet budget per counterfactual (one attribute and sign).
        refine_nfe: UNet budget per flip for further swap steps between the bracketing samples, so that
            the flip is shown with the weakest sample found at or past the minimal strength (0 = the first
            flipping candidate strength; None = no limit). The trajectory method's option.
        flip_margin: logits past the decision threshold an edit must reach to count as a flip (0 = any
            sign change); keeps scans that sit near their threshold from "flipping" for every attribute.
        disentangle: orthogonalise the directions against each other and the anatomy directions.
        signs: which edits to try per attribute: "auto" (default) removes what the report states and adds
            what it does not; without a report, pathologies follow the classifier's decision and every
            other attribute is tried both ways. Or a list of "add" / "remove" for every attribute.
        edit_guidance: w after the swap step (eps_src + w (eps_edit - eps_src)); 1 = the paper's plain swap;
            None = the generator's own for the attribute's kind (`kind_edits`), else its own (`edit_guidance` in
            its xcounter.json), else 3.
        examine: names of the attributes to examine (default: every non-anatomy attribute).
        restate: when the source prompt states the opposite of an edit ("Right pleural effusion." for a
            removal), edit from the prompt with that sentence swapped for the attribute's opposite phrase
            (the paper's prompt swap) rather than from the prompt itself; False = direction only. Acquisition
            statements are restated only when their edit is confined by `where` (see
            `xcounter.methods.trajectory.restates`).
        localise: signs ("add", "remove") whose edits are confined to where the source and edited prompts
            disagree about the noise (DiffEdit's mask read on the inversion path,
            `xcounter.disentangle.edit_region`); outside it the counterfactual is the reconstruction. Costs 6 UNet
            evaluations per edit. Default: removals (`LOCALISED_SIGNS`); True = both, False or () = none.
        mediation: with an oracle, a flip whose counterfactual also made another attribute's own flipping
            edit gets the verdict "mediated" and names that attribute (`xcounter.mediation`); without an
            oracle there is nothing to read it from and verdicts are unchanged.
        confirm_shortcuts: re-ask every shortcut flag on the reconstruction with only the edit's strongest
            pixels pasted (the drawn device), and at the trajectory's strongest edit (the device drawn in
            full); when either leaves the decision, the verdict is "unconfirmed" (`xcounter.confirmation`). None = the generator's own (`confirm_shortcuts` in its xcounter.json,
            on for the phantom CXR generator, whose device edits also brighten the lungs).
        anchor: what counterfactuals are drawn onto: "scan" (the scan plus what the edit changed, the generator's
            own pixels only where the edit acted; the decision explained starts at the scan's own) or
            "reconstruction" (the generator's output). None = the generator's own (`anchor` in its
            xcounter.json; "scan" for the phantom models, else "reconstruction"; docs/CONTRACTS.md, Engine).
        prune: show each flip with only the parts of the generator's edit the decision needs, the rest of the
            image unedited (`xcounter.edit_pruning`; the whole sample stays in `Counterfactual.sample`, and the
            shortcut check reads it). Verdicts and minimal strengths do not depend on it; an oracle's side effects
            (and so "mediated") are read on what is shown. The trajectory method's option.
        removal_check: an addition that flips the decision only through the pixels of another attribute's
            flipping removal, changed the same way (an "add hair" that wipes the ruler), is "mediated" and
            credited to that removal (`xcounter.same_change`; no oracle, no model call).
        inversion: how the scan is inverted (`SDGenerator.invert`): "ddpm" (edit-friendly noise maps: the
            reconstruction is the VAE's own and edits keep the scan's noise) or "ddim"; None = the generator's
            own (`inversion` in its xcounter.json), or "ddim" when `inversion_iterations` > 0 is asked for.
        inversion_iterations: fixed-point refinements per DDIM inversion step (`SDGenerator.invert`): a
            reconstruction that keeps more of the scan for one UNet evaluation more per step each, at some
            cost to how cleanly edits then draw (docs/CONTRACTS.md); None = the generator's own (default 0).
    """

    def __init__(self, classifier: "Classifier", generator: "SDGenerator",
                 attributes: "str | Path | AttributeSet" = "cxr", oracle: Any = None, steps: int | None = None,
                 swap_steps: Sequence[int] | None = None, method: Any = "trajectory", attribution: bool = True, *,
                 alpha: float | None = None, max_nfe: int | None = DEFAULT_MAX_NFE,
                 refine_nfe: int | None = DEFAULT_REFINE_NFE,
                 tolerance: float = DEFAULT_TOLERANCE, flip_margin: float = DEFAULT_FLIP_MARGIN,
                 disentangle: bool = True, signs: str | Sequence[str] = "auto", examine: Sequence[str] | None = None,
                 edit_guidance: float | None = None, restate: bool = True,
                 localise: Sequence[str] | bool = LOCALISED_SIGNS, mediation: bool = True,
                 inversion_iterations: int | None = None, inversion: str | None = None,
                 confirm_shortcuts: bool | None = None, anchor: str | None = None, prune: bool = True,
                 removal_check: bool = True):
        self.classifier = classifier
        self.generator = generator
        self.attributes = load_attributes(attributes)
        self.oracle = self._load_oracle(oracle)
        self.steps = int(steps) if steps is not None else None
        if self.steps is not None and self.steps < 1:
            raise XCounterError(f"steps must be at least 1, got {steps}")
        self.swap_steps = None if swap_steps is None else sorted({int(s) for s in swap_steps}, reverse=True)
        if self.swap_steps == []:
            raise XCounterError("swap_steps is empty; give at least one denoising step to swap at")
        if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
            raise XCounterError(f"alpha must be a positive number, got {alpha}")
        if not 0 < tolerance < 1:
            raise XCounterError(f"tolerance must lie between 0 and 1, got {tolerance}")
        if not (math.isfinite(flip_margin) and flip_margin >= 0):
            raise XCounterError(f"flip_margin must be a number >= 0 (logits), got {flip_margin}")
        if max_nfe is not None and max_nfe < 1:
            raise XCounterError(f"max_nfe must be at least 1 (or None for no budget), got {max_nfe}")
        self.attribution = attribution
        #: what the caller set (None: per attribute kind, as the generator draws it; `resolve_edit_settings`)
        self.explicit_alpha = None if alpha is None else float(alpha)
        self.alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
        self.max_nfe, self.tolerance = max_nfe, float(tolerance)
        self.refine_nfe = refine_nfe
        self.flip_margin = float(flip_margin)
        self.disentangle = disentangle
        self.explicit_edit_guidance = None if edit_guidance is None else float(edit_guidance)
        edit_guidance = resolve_edit_guidance(edit_guidance, generator)
        if not (math.isfinite(edit_guidance) and edit_guidance >= 1):
            raise XCounterError(f"edit_guidance must be a number >= 1, got {edit_guidance}")
        self.edit_guidance = float(edit_guidance)
        self.restate = bool(restate)
        self.localise = localised_signs(localise)
        self.mediation = bool(mediation)
        if confirm_shortcuts is not None and not isinstance(confirm_shortcuts, bool):
            raise XCounterError(f"confirm_shortcuts must be True, False or None, got {confirm_shortcuts!r}")
        self.confirm_shortcuts = bool(getattr(generator, "confirm_shortcuts", False)
                                      if confirm_shortcuts is None else confirm_shortcuts)
        self.anchor = checked_anchor(getattr(generator, "anchor", "reconstruction") if anchor is None else anchor)
        if not isinstance(prune, bool):
            raise XCounterError(f"prune must be True or False, got {prune!r}")
        self.prune = prune
        if not isinstance(removal_check, bool):
            raise XCounterError(f"removal_check must be True or False, got {removal_check!r}")
        self.removal_check = removal_check
        # diffusers: load lazily
        from xcounter.generators.stable_diffusion import checked_inversion, checked_inversion_iterations
        if inversion_iterations is not None:
            checked_inversion_iterations(inversion_iterations, "inversion_iterations")
        if inversion is None:  # refinements are asked for DDIM inversion, whatever the generator's own
            inversion = "ddim" if inversion_iterations else getattr(generator, "inversion", "ddim")
        if inversion_iterations is None:
            inversion_iterations = getattr(generator, "inversion_iterations", 0) if inversion == "ddim" else 0
        self.inversion, self.inversion_iterations = checked_inversion(inversion, inversion_iterations)
        if isinstance(signs, str) and signs == "auto":
            self.signs: str | tuple[str, ...] = "auto"
        else:
            signs = [signs] if isinstance(signs, str) else list(signs)
            unknown = [s for s in signs if s not in SIGNS]
            if unknown or not signs:
                raise XCounterError(f"signs must be 'auto' or among {', '.join(SIGNS)}, "
                                    f"got {', '.join(map(str, signs)) or 'none'}")
            self.signs = tuple(dict.fromkeys(signs))
        if examine is not None:
            anatomy = [self.attributes[name].name for name in examine if self.attributes[name].kind == "anatomy"]
            if anatomy or not examine:
                raise XCounterError("examine needs one or more non-anatomy attributes (anatomy is only "
                                    f"disentangled against){': not ' + ', '.join(anatomy) if anatomy else ''}")
        self.examine = None if examine is None else list(dict.fromkeys(examine))
        self.method = self._make_method(method)
        self._directions: LanguageDirections | None = None

    # -- construction --------------------------------------------------------------------------------
    @staticmethod
    def _load_oracle(oracle: Any):
        if oracle is None or hasattr(oracle, "measure"):
            return oracle
        from xcounter.phantoms.oracle import load_oracle
        return load_oracle(oracle)

    def _make_method(self, method: Any):
        if not isinstance(method, str):
            if not hasattr(method, "generate"):
                raise XCounterError("method must be a name or an object with a `generate` method")
            return method
        options = dict(alpha=self.explicit_alpha, swap_steps=self.swap_steps, tolerance=self.tolerance,
                       max_nfe=self.max_nfe, oracle=self.oracle, edit_guidance=self.explicit_edit_guidance,
                       restate=self.restate, localise=self.localise, refine_nfe=self.refine_nfe,
                       anchor=self.anchor)
        if method == "trajectory":
            return TrajectoryMethod(**options, prune=self.prune)
        if method == "random":  # the control shares every trajectory setting but the direction
            return get_method(method, **options)
        return get_method(method)

    @property
    def examined(self) -> list:
        """Attributes that get counterfactuals: `examine`, or all but anatomy (anatomy is only disentangled against)."""
        if self.examine is not None:
            return [self.attributes[name] for name in self.examine]
        return [a for a in self.attributes if a.kind != "anatomy"]

    def directions(self) -> LanguageDirections:
        """Language directions of every non-anatomy attribute (fitted once per Explainer; the same whichever
        subset is examined, so a direction does not depend on which others were asked about)."""
        if self._directions is None:
            self._directions = LanguageDirections(self.generator, self.attributes,
                                                  disentangle=self.disentangle).fit()
        return self._directions

    # -- the explanation -------------------------------------------------------------------------------
    def explain(self, scan: Any, target: str | Sequence[str] | None = None, report_text: str | None = None,
                seed: int = 0) -> Explanation:
        """Explain the classifier's decision(s) on `scan` (path, array, PIL image or Scan).

        `target`: one label or several; None = every positive label and the strongest negative.
        `report_text`: the source prompt for inversion (default: written from the positive findings).
        """
        from xcounter.io import load_scan

        loaded = load_scan(scan)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.no_grad():
                return self._explain(loaded, target, report_text, seed)

    def _targets(self, target, predictions: list[Prediction]) -> list[str]:
        if target is None:
            chosen = default_targets(predictions)
        else:
            chosen = [target] if isinstance(target, str) else list(target)
        names = [self.classifier.labels[self.classifier.target_index(t)] for t in chosen]
        if not names:
            raise XCounterError(f"classifier '{self.classifier.name}' offers no target to explain")
        return list(dict.fromkeys(names))

    def _explain(self, scan, target, report_text, seed: int) -> Explanation:
        classifier, generator = self.classifier, self.generator
        nfe_start = generator.nfe
        predictions = classifier.predict(scan.to_tensor())[0]
        targets = self._targets(target, predictions)
        prompt = report_text.strip() if report_text and report_text.strip() else \
            source_prompt(self.attributes, predictions)
        steps = self.steps or generator.steps
        if self.swap_steps is not None and not all(0 <= s < steps for s in self.swap_steps):
            raise XCounterError(f"swap steps must lie in 0..{steps - 1} for {steps} DDIM steps, got {self.swap_steps}")

        inversion = generator.invert(scan.to_tensor(), prompt, steps, iterations=self.inversion_iterations,
                                     method=self.inversion, seed=seed)
        prefix = inversion.prefix if inversion.prefix is not None else \
            generator.source_path(inversion, generator.embed([prompt])[0], steps)
        source_embedding = getattr(prefix, "source", None)
        if source_embedding is None:
            source_embedding = generator.embed([prompt])[0]
        directions = self.directions()
        if hasattr(self.method, "reset"):
            self.method.reset()

        contexts = {t: EditContext(
            classifier=classifier, generator=generator, attributes=self.attributes, inversion=inversion,
            source_embedding=source_embedding, target=t, target_index=classifier.target_index(t), seed=seed,
            steps=steps, prefix=prefix, directions=directions.directions_, max_nfe=self.max_nfe,
            flip_margin=self.flip_margin, prompt=prompt) for t in targets}
        warnings_list = self._reconstruction_warnings(inversion, predictions, targets)

        from_report = report_text is not None and bool(report_text.strip())
        signs = {a.name: self.signs_for(a, prompt, from_report, predictions, targets) for a in self.examined}
        gradient_ranking: dict[str, dict[str, float]] = {}
        if hasattr(self.method, "trajectory"):  # UNet once per attribute and sign, before any search
            first = contexts[targets[0]]
            trajectories = {(a.name, s): self.method.trajectory(first, a, s) for a in self.examined
                            for s in signs[a.name]}
            for t in targets:
                gradient_ranking[t] = self._gradient_ranking(contexts[t], trajectories)

        results = []
        for t in targets:
            for attribute in self.examined:
                counterfactuals = [self.method.generate(contexts[t], attribute, s) for s in signs[attribute.name]]
                results.append(self._result(t, attribute, counterfactuals, gradient_ranking.get(t, {})))
        if self.confirm_shortcuts:  # before mediation, so every flag has its check whatever the oracle says
            unedited = inversion.image.clamp(0, 1) if self.anchor == "scan" else inversion.reconstruction
            confirm_shortcuts(results, classifier, to_hwc(unedited), flip_margin=self.flip_margin)
        if self.removal_check:  # before the oracle's mediation, which reads what each edit made and may overrule
            apply_removed_causes(results, keep=self.own_findings)
        if self.oracle is not None and self.mediation:
            apply_mediation(results, keep=self.own_findings)

        nfe = generator.nfe - nfe_start
        if self.examined and nfe / len(self.examined) > NFE_PER_ATTRIBUTE_BUDGET:
            warnings_list.append(f"{nfe} UNet evaluations ({nfe / len(self.examined):.0f} per attribute) exceed the "
                                 f"budget of {NFE_PER_ATTRIBUTE_BUDGET} per attribute")
        attributions = self._attributions(inversion.image, targets, warnings_list)
        return Explanation(
            image=to_hwc(inversion.image.clamp(0, 1)), reconstruction=to_hwc(inversion.reconstruction),
            reconstruction_error=float(inversion.error), reconstruction_ssim=float(inversion.ssim), prompt=prompt,
            predictions=predictions, results=results, seed=seed, nfe=int(nfe), targets=targets,
            source=scan.summary(), classifier=classifier.identity(), generator=generator.identity(),
            settings=self._settings(steps), direction_cosine=directions.cosine_report(),
            gradient_ranking=gradient_ranking, attributions=attributions, warnings=warnings_list,
            versions=_versions(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"))

    # -- pieces ------------------------------------------------------------------------------------------
    def signs_for(self, attribute, prompt: str, from_report: bool, predictions: Sequence[Prediction],
                  targets: Sequence[str] = ()) -> tuple:
        """Which edits make sense for this scan: remove what is there, add what is not.

        With a report (`report_text`), the report says what is there. Without one, a pathology is there
        when the classifier calls its label positive; anything else is unknown, so both edits are tried.
        A pathology whose label is an explained target is also edited toward the other decision, so a
        positive call the report does not support can still be traced to (or cleared of) its finding.
        """
        if self.signs != "auto":
            return self.signs
        decisions = {p.label: p.positive for p in predictions}
        present = attribute.stated_in(prompt) if from_report else None
        if present is None and attribute.kind == "pathology" and not from_report:
            said = {decisions[label] for label in attribute.labels if label in decisions}
            present = said.pop() if len(said) == 1 else None  # outputs that disagree: unknown
        wanted = set(SIGNS) if present is None and not from_report else {"remove" if present else "add"}
        for target in targets:
            if attribute.kind == "pathology" and self.classifier.finding(target) in attribute.labels \
                    and target in decisions:
                wanted.add("remove" if decisions[target] else "add")
        return tuple(s for s in SIGNS if s in wanted)

    def own_findings(self, target: str) -> list[str]:
        """The pathology attributes a target label names (Effusion: pleural_effusion): never demoted as mediated."""
        finding = self.classifier.finding(target)
        return [a.name for a in self.examined if a.kind == "pathology" and finding in a.labels]

    def _settings(self, steps: int) -> dict:
        swap_steps = self.swap_steps if self.swap_steps is not None else select_swap_steps(
            steps, DEFAULT_STRENGTHS, self.max_nfe, self.generator.guidance_scale, self.edit_guidance)
        return {"method": getattr(self.method, "name", type(self.method).__name__), "steps": steps,
                "swap_steps": swap_steps, "guidance_scale": self.generator.guidance_scale, "alpha": self.alpha,
                "max_nfe": self.max_nfe, "inversion": self.inversion,
                **({"inversion_eta": getattr(self.generator, "inversion_eta", None)} if self.inversion == "ddpm" else {}),
                "inversion_iterations": self.inversion_iterations,
                "refine_nfe": getattr(getattr(self.method, "search", self.method), "refine_nfe", None),
                "tolerance": self.tolerance, "flip_margin": self.flip_margin,
                "disentangle": self.disentangle,
                "signs": self.signs if isinstance(self.signs, str) else list(self.signs),
                "edit_guidance": self.edit_guidance, "kind_edits": self._kind_edits(steps),
                "restate": self.restate, "localise": list(self.localise),
                "attributes": self.attributes.domain,
                "oracle": self.oracle is not None, "mediation": self.oracle is not None and self.mediation,
                "confirm_shortcuts": self.confirm_shortcuts, "anchor": self.anchor,
                "removal_check": self.removal_check,
                "prune": self.prune and getattr(self.method, "prune", False),
                **({"prune_fractions": list(getattr(self.generator, "prune_fractions", PART_FRACTIONS)),
                    "fill_removals": bool(getattr(self.generator, "fill_removals", False))}
                   if self.prune and getattr(self.method, "prune", False) else {}),
                "device": str(getattr(self.generator, "device", "cpu"))}

    def _kind_edits(self, steps: int) -> dict[str, dict]:
        """The attribute kinds examined whose edits the generator draws with their own α and w (`kind_edits`),
        with the swap steps that buys; "KIND:SIGN" where one sign differs from its kind. Empty when every edit
        uses `alpha` and `edit_guidance`."""
        out = {}
        def resolve(*kind_and_sign: str) -> tuple[float, float]:
            return resolve_edit_settings(self.explicit_alpha, self.explicit_edit_guidance, self.generator,
                                         *kind_and_sign)

        for kind in dict.fromkeys(a.kind for a in self.examined):
            settings = resolve(kind)
            found = {kind: settings} if settings != (self.alpha, self.edit_guidance) else {}
            for sign in SIGNS:
                signed = resolve(kind, sign)
                if signed != settings:
                    found[f"{kind}:{sign}"] = signed
            for key, (alpha, edit_guidance) in found.items():
                swap_steps = self.swap_steps if self.swap_steps is not None else select_swap_steps(
                    steps, DEFAULT_STRENGTHS, self.max_nfe, self.generator.guidance_scale, edit_guidance)
                out[key] = {"alpha": alpha, "edit_guidance": edit_guidance, "swap_steps": swap_steps}
        return out

    def _reconstruction_warnings(self, inversion, predictions: list[Prediction], targets: list[str]) -> list[str]:
        found = []
        closer = " (with DDPM inversion the reconstruction is the generator's VAE round trip)" \
            if getattr(inversion, "method", "ddim") == "ddpm" else \
            " (a closer reconstruction may help: `--inversion ddpm`, inversion='ddpm' in Python)"
        if inversion.error > RECONSTRUCTION_WARNING:
            found.append(f"reconstruction error {inversion.error:.3f} is above {RECONSTRUCTION_WARNING}: "
                         "counterfactuals may reflect the generator, not the scan" + closer)
        if self.anchor == "scan":  # edits are drawn onto the scan: its decision and readings are where they start
            return found
        recon = self.classifier.predict(inversion.reconstruction)[0]
        for t in targets:
            scan_positive = next(p.positive for p in predictions if p.label == t)
            recon_positive = next(p.positive for p in recon if p.label == t)
            if scan_positive != recon_positive:
                found.append(f"the reconstruction is {'positive' if recon_positive else 'negative'} for {t} while "
                             "the scan is not: flips are measured from the reconstruction's decision" + closer)
        lost = self._reconstruction_oracle_change(inversion)
        if lost:
            found.append("the reconstruction already differs from the scan (oracle): " +
                         ", ".join(f"{name} {change:+.2f}" for name, change in lost.items()) +
                         "; every counterfactual starts from it" + closer)
        return found

    def _reconstruction_oracle_change(self, inversion) -> dict[str, float]:
        """{attribute: reconstruction - scan} for the oracle readings that moved at least
        RECONSTRUCTION_ORACLE_CHANGE, largest first; empty without an oracle."""
        if self.oracle is None:
            return {}
        with torch.no_grad():
            values = self.oracle.measure(torch.cat([inversion.image, inversion.reconstruction]).float())
        changes = {name: float(v[1] - v[0]) for name, v in values.items()}
        return dict(sorted(((k, v) for k, v in changes.items() if abs(v) >= RECONSTRUCTION_ORACLE_CHANGE),
                           key=lambda kv: -abs(kv[1])))

    def _gradient_ranking(self, context: EditContext, trajectories: dict) -> dict[str, float]:
        """Per attribute, the first-order margin change toward the other decision (best sign), largest first."""
        any_trajectory = next(iter(trajectories.values()))
        z_source = any_trajectory.points[:1]
        deltas = {key: traj.points[-1:] - traj.points[:1] for key, traj in trajectories.items()
                  if traj.points.shape[0] > 1}
        if not deltas:
            return {}
        projection = GradientProjection(self.classifier, self.generator, context.target_index,
                                        residual=getattr(any_trajectory, "residual", None)).fit(z_source, deltas)
        toward_flip = -1.0 if projection.margin_ > 0 else 1.0
        scores: dict[str, float] = {}
        for (name, _sign), score in projection.scores_.items():
            scores[name] = max(scores.get(name, float("-inf")), toward_flip * score)
        return dict(sorted(scores.items(), key=lambda item: -item[1]))

    def _result(self, target: str, attribute, counterfactuals: list, gradients: dict[str, float]) -> AttributeResult:
        result = AttributeResult(target=target, attribute=attribute.name, kind=attribute.kind,
                                 verdict="does not drive", minimal_strength=None, flipped=False,
                                 gradient_sensitivity=gradients.get(attribute.name), counterfactuals=counterfactuals)
        best = result.best
        if best is not None:
            result.flipped = bool(best.flipped)
            result.minimal_strength = best.minimal_strength if best.flipped else None
            result.sign = best.sign
        result.verdict = verdict_of(attribute.kind, result.flipped)
        return result

    def _attributions(self, image: torch.Tensor, targets: list[str], warnings_list: list[str]) -> dict:
        if not self.attribution:
            return {}
        module = _attribution_module()
        if module is None:
            return {}
        maps = {}
        for t in targets:
            try:
                maps[t] = module.attribution_maps(self.classifier, image, self.classifier.target_index(t))
            except Exception as exc:  # noqa: BLE001 - a saliency map must never sink the explanation
                warnings.warn(f"attribution maps for {t} failed: {exc}", stacklevel=2)
                warnings_list.append(f"attribution maps for {t} could not be computed ({type(exc).__name__})")
        return maps
