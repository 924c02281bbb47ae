"""The few lines a terminal user reads: decisions, ranked attributes with verdicts, warnings."""
from __future__ import annotations

from xcounter.explanation import Explanation
from xcounter.report.html import (needed_near_full_strength, poor_reconstruction, reconstruction_already_warned,
                                  unedited_name)

VERDICT_WORDS = {"shortcut": "SHORTCUT ALERT", "drives": "drives", "mediated": "mediated",
                 "unconfirmed": "unconfirmed", "does not drive": "does not drive"}
#: an oracle reading that moved this much under the edit is named beside it: the flip may come from that
#: change rather than from the attribute (a binary attribute read on the other side of 0.5, or about)
ENTANGLED_CHANGE = 0.5


def _flat(text: str) -> str:
    """Untrusted names on one line: a label cannot start new lines or move the cursor."""
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))


def text_summary(explanation: Explanation) -> str:
    """A short plain-text summary of an explanation (no colours, safe for logs)."""
    source = _flat(explanation.source.get("name") or "scan")
    lines = [f"Scan {source}: reconstruction error {explanation.reconstruction_error:.3f}, "
             f"SSIM {explanation.reconstruction_ssim:.2f}"
             + ("; edits drawn onto the scan" if unedited_name(explanation) == "scan" else "")]
    targets = list(dict.fromkeys(list(explanation.targets) + [r.target for r in explanation.results]))
    for target in targets:
        try:
            prediction = explanation.prediction(target)
            decision = f"{'positive' if prediction.positive else 'negative'} (probability {prediction.probability:.2f})"
        except KeyError:
            decision = "not predicted"
        lines.append(f"{_flat(target)}: {decision}")
        ranking = explanation.ranking_for(target)
        width = max((len(_flat(r.attribute)) for r in ranking), default=0)
        for rank, result in enumerate(ranking, start=1):
            verdict = VERDICT_WORDS.get(result.verdict, _flat(result.verdict))
            best = result.best
            if result.flipped and result.minimal_strength is not None:
                how = f"flips when {'removed' if result.sign == 'remove' else 'added'} at strength {result.minimal_strength:.2f}"
                if best is not None:
                    how += f" (p {best.probability_before:.2f} -> {best.probability_after:.2f}"
                    if best.shown_past_crossing:
                        how += f" on the sample at {best.image_strength:.2f}"
                    if best.pruned and best.parts:
                        how += f", {best.parts_kept} of its {best.parts} changed parts kept"
                        how += ", refilled at the levels around them" if best.filled else ""
                    how += ")"
                    how += _also_changed(best.oracle_change, result.attribute)
                if result.verdict == "mediated" and result.mediator:
                    removal = "the removal of " if result.mediated_by == "pixels" else ""
                    how += f"; credited to {removal}{_flat(result.mediator)}"
                if result.verdict == "unconfirmed" and result.core is not None and not result.core.flipped:
                    how += f"; its own pixels alone do not flip it (p {result.core.probability:.2f})"
                elif result.verdict == "unconfirmed" and result.core is not None:
                    how += (f"; drawn in full it does not flip it "
                            f"(p {result.core.strongest_probability:.2f} at the strongest edit)")
                if needed_near_full_strength(result):
                    how += "; needed an edit near full strength: look at the counterfactual"
            elif best is not None:
                how = f"no flip (largest change {best.delta_probability:+.2f})"
            else:
                how = "not tested"
            lines.append(f"  {rank:>2}. {_flat(result.attribute):<{width}}  {verdict:<14}  {how}")
        if not ranking:
            lines.append("  no attributes tested")
    warning = None if reconstruction_already_warned(explanation) else poor_reconstruction(explanation)
    for text in ([warning] if warning else []) + list(explanation.warnings):
        lines.append(f"Warning: {_flat(text)}")
    return "\n".join(lines)


def _also_changed(oracle_change: dict[str, float] | None, attribute: str, shown: int = 3) -> str:
    """"; also changed: chest_tube -0.93" for the largest other oracle changes (when an oracle was given)."""
    others = sorted(((k, v) for k, v in (oracle_change or {}).items()
                     if k != attribute and abs(v) >= ENTANGLED_CHANGE), key=lambda kv: -abs(kv[1]))
    if not others:
        return ""
    return "; also changed: " + ", ".join(f"{_flat(k)} {v:+.2f}" for k, v in others[:shown])
