"""Counterfactual quality against baselines, side by side on the same scans, models and edits.

Methods (`xcounter.methods.get_method`): ours ("trajectory": swap-step trajectory + Bézier search), Latent
Shift (classifier gradient through the VAE decoder), SDEdit (img2img with the edited prompt; its search
over rising strengths, and each candidate strength on its own as a user would run SDEdit at one fixed
strength), and a random text direction of the same norm through our search (the control).
Per method: flip rate; proximity (L1, SSIM) at the flip; identity preservation (share of the other
attributes the oracle reads as unchanged); whether the oracle sees the intended attribute change; and
realism (Fréchet distance on oracle features against real unseen phantoms of the intended class).
Two reference rows: ours with removals not confined to their DiffEdit region (the ablation of
`localise`), and the true counterfactual (the renderer's own toggle of the attribute, everything else
kept), which shows how far the oracle-based scores can go.

    python benchmarks/quality.py
    python benchmarks/quality.py --quick --models tiny
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import _common as C  # noqa: E402

NAME = "quality"
DEFAULT_N, QUICK_N = 20, 2
METHODS = ("trajectory", "latent_shift", "sdedit", "random")
UNCONFINED = "ours, removals unconfined"
FULL_EDIT = "ours at full strength (trajectory end)"
UNPRUNED = "ours, the whole sample (unpruned)"
CROSSING = "ours, shown at the Bézier crossing (latent blend)"
TRUE_TOGGLE = "true counterfactual (renderer toggle)"
#: the anchor the generator does not use by default (`SDGenerator.anchor`), as an ablation row
OTHER_ANCHOR = {"reconstruction": "ours, drawn onto the scan (anchor)",
                "scan": "ours, drawn onto the reconstruction (anchor)"}
#: the inversion the generator does not use by default (`SDGenerator.inversion`), as an ablation row
OTHER_INVERSION = {"ddim": "ours, DDPM inversion (edit-friendly noise)", "ddpm": "ours, DDIM inversion"}
#: (classifier, target label, edited attribute) per domain: the planted shortcut and a real cause (the CXR
#: effusion; the skin veil for the 7-point-checklist model's "Blue-white veil", an output that follows it alone)
TASKS = {"cxr": [("cxr-shortcut", "Pneumothorax", "chest_tube"), ("cxr-clean", "Effusion", "pleural_effusion")],
         "skin": [("skin-shortcut", "Melanoma", "ruler"), ("skin-7pt", "Blue-white veil", "blue_white_veil")]}
#: real phantoms drawn per counterfactual task for the realism reference set
REFERENCE_PER_TASK = 4
#: a continuous attribute counts as unchanged within this much (its values live in [0, 1])
CONTINUOUS_TOLERANCE = 0.1
REFERENCE_SEED_OFFSET = 5_000_000


def to_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().clamp(0, 1)


def same_reading(oracle, name: str, before: float, after: float) -> bool:
    """Whether the oracle reads one attribute alike: the same side of 0.5 (binary), within the tolerance
    (continuous)."""
    if oracle.types.get(name) == "continuous":
        return abs(before - after) < CONTINUOUS_TOLERANCE
    return (before > 0.5) == (after > 0.5)


def oracle_readout(oracle, before: np.ndarray, after: np.ndarray, attribute: str, sign: str) -> dict:
    """Identity (share of other attributes unchanged) and whether the edited attribute reached its target state."""
    with torch.no_grad():
        values = oracle.measure(torch.cat([to_batch(before), to_batch(after)]))
        features = oracle.logits(to_batch(after))[0].numpy()
    kept, changed = [], []
    for name, v in values.items():
        if name == attribute:
            continue
        kept.append(same_reading(oracle, name, float(v[0]), float(v[1])))
        if not kept[-1]:
            changed.append(name)
    edited = bool((float(values[attribute][1]) > 0.5) == (sign == "add")) if attribute in values else None
    return {"identity": float(np.mean(kept)) if kept else None, "edited": edited, "features": features,
            "all_kept": bool(all(kept)), "changed": changed}


def kept_against_scan(oracle, scan_values: np.ndarray, features: Sequence[float], attribute: str) -> bool:
    """Whether every attribute but the edited one reads on the counterfactual as on the input scan itself (the
    goal's reference is the method's own unedited image; this one also charges what the inversion lost)."""
    after = 1.0 / (1.0 + np.exp(-np.asarray(features, dtype=float)))
    return all(same_reading(oracle, name, float(scan_values[j]), float(after[j]))
               for j, name in enumerate(oracle.attributes) if name != attribute)


def record(cf, oracle, attribute: str, sign: str, seconds: float | None, method: str | None = None,
           image=None, reference=None, flipped=None, nfe=None) -> dict:
    image = cf.image if image is None else image
    reference = cf.film[0] if reference is None else reference
    from xcounter.metrics import l1, ssim

    readout = oracle_readout(oracle, reference, image, attribute, sign)
    flipped = bool(cf.flipped) if flipped is None else bool(flipped)
    return {"method": method or cf.method, "flipped": flipped,
            "strength": cf.minimal_strength if method is None else None,
            "l1": l1(image, reference), "ssim": ssim(image, reference), "nfe": int(cf.nfe if nfe is None else nfe),
            "seconds": seconds, "identity": readout["identity"], "edited": readout["edited"],
            "clean_edit": None if readout["edited"] is None else bool(readout["edited"] and readout["all_kept"]),
            "changed": readout["changed"], "features": readout["features"].tolist()}


def logit(probability: float) -> float:
    """The margin a stored probability came from (counterfactuals keep probabilities, flips are read on margins)."""
    p = min(max(float(probability), 1e-7), 1 - 1e-7)
    return float(np.log(p / (1 - p)))


def fixed_strength_records(cf, oracle, attribute: str, sign: str, steps: int) -> list[dict]:
    """SDEdit at each single candidate strength: the sweep images the SDEdit search computed anyway."""
    from xcounter.search import DEFAULT_FLIP_MARGIN, is_flipped

    out = []
    before = cf.probabilities[0] > 0.5
    for k in range(1, len(cf.strengths)):
        strength = cf.strengths[k]
        flipped = is_flipped(logit(cf.probabilities[k]), before, DEFAULT_FLIP_MARGIN)
        out.append(record(cf, oracle, attribute, sign, None, method=f"sdedit@{strength:.2f}", image=cf.film[k],
                          flipped=flipped, nfe=round(strength * steps)))
    return out


def full_edit_record(cf, oracle, attribute: str, sign: str) -> dict:
    """Our trajectory's strongest point (strength 1) instead of its minimal flip: whether the generator's whole
    edit is clean, apart from where the classifier happens to flip (the goal is read at the flip shown)."""
    from xcounter.search import DEFAULT_FLIP_MARGIN, is_flipped

    flipped = is_flipped(logit(cf.probabilities[-1]), cf.probabilities[0] > 0.5, DEFAULT_FLIP_MARGIN)
    return record(cf, oracle, attribute, sign, None, method=FULL_EDIT, image=cf.film[-1], flipped=flipped)


def contexts_for_scan(models: C.DomainModels, pixels: np.ndarray, report: str, seed: int, directions: dict,
                      tasks: list[tuple[str, str, str]], inversion_method: str | None = None):
    """One inversion per scan (`inversion_method`: None = the generator's own); an EditContext per
    (classifier, target)."""
    from xcounter.methods.base import EditContext
    from xcounter.methods.trajectory import DEFAULT_MAX_NFE
    from xcounter.search import DEFAULT_FLIP_MARGIN

    generator = models.generator
    image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
    inversion = generator.invert(image, report, generator.steps, method=inversion_method, seed=seed)
    with torch.no_grad():
        source = generator.embed([report])[0]
    contexts = {}
    for name, label, _attribute in tasks:
        classifier = models.classifiers[name]
        contexts[(name, label)] = EditContext(
            classifier=classifier, generator=generator, attributes=models.attributes, inversion=inversion,
            source_embedding=source, target=label, target_index=classifier.target_index(label), seed=seed,
            steps=generator.steps, prefix=inversion.prefix, directions=directions, max_nfe=DEFAULT_MAX_NFE,
            flip_margin=DEFAULT_FLIP_MARGIN,  # every method must pass the product's flip rule
            prompt=report)  # as the explainer does: edits against the report restate it
    return inversion, contexts


def true_toggle_record(models: C.DomainModels, context, phantom_seed: int, overrides: dict, attribute: str,
                       sign: str) -> dict:
    """The renderer's own counterfactual: the same phantom with only `attribute` toggled (no generator)."""
    from xcounter.search import is_flipped

    before = C.phantom_tensor(models.domain, phantom_seed, models.generator, **overrides)
    after = C.phantom_tensor(models.domain, phantom_seed, models.generator, **{**overrides, attribute: sign == "add"})
    with torch.no_grad():
        margins = context.classifier.margins(torch.cat([before, after]))[:, context.target_index].float()
    flipped = is_flipped(float(margins[1]), float(margins[0]) > 0, context.flip_margin)
    images = [b[0].permute(1, 2, 0).numpy() for b in (before, after)]
    readout = oracle_readout(models.oracle, images[0], images[1], attribute, sign)
    from xcounter.metrics import l1, ssim
    return {"method": TRUE_TOGGLE, "flipped": bool(flipped), "strength": None, "l1": l1(images[1], images[0]),
            "ssim": ssim(images[1], images[0]), "nfe": 0, "seconds": None, "identity": readout["identity"],
            "edited": readout["edited"], "clean_edit": None if readout["edited"] is None else
            bool(readout["edited"] and readout["all_kept"]), "changed": readout["changed"],
            "features": readout["features"].tolist()}


def reference_features(models: C.DomainModels, attribute: str, present: bool, base_seed: int, count: int,
                       constraints: dict) -> list[list[float]]:
    """Oracle features of real unseen phantoms with the attribute in the intended state."""
    images = torch.cat([C.phantom_tensor(models.domain, base_seed + k, models.generator,
                                         **{**constraints, attribute: present}) for k in range(count)])
    with torch.no_grad():
        return models.oracle.logits(images).numpy().tolist()


def frechet(features: list, reference: list) -> float | None:
    from xcounter.metrics import frechet_distance
    if len(features) < 2 or len(reference) < 2:
        return None
    return frechet_distance(np.asarray(features), np.asarray(reference))


def run_domain(domain: str, args, total: C.Budget) -> dict:
    budget = C.domain_budget(args)
    from xcounter.disentangle.directions import LanguageDirections
    from xcounter.methods import get_method
    from xcounter.methods.trajectory import DEFAULT_MAX_NFE, to_hwc

    wanted = sorted({name for name, _, _ in TASKS[domain]})
    models = C.load_domain(domain, args.models, wanted)
    tasks = [t for t in TASKS[domain] if t[0] in models.classifiers]
    result: dict[str, Any] = {"models": models.describe(), "tasks": [list(t) for t in tasks], "records": []}
    if not tasks:
        return result
    examined = [a.name for a in models.attributes if a.kind != "anatomy"]
    directions = LanguageDirections(models.generator, models.attributes, names=examined, disentangle=True) \
        .fit().directions_
    n = args.n or (1 if args.models == "tiny" else QUICK_N if args.quick else DEFAULT_N)
    records, reference, reference_second, done = [], [], [], 0
    constraints = {"pneumothorax": False} if domain == "cxr" else {}
    for phantom_seed, overrides in C.scan_plan(domain, n, args.seed):
        if not budget.allows_more(done):
            break
        pixels, truth, report = C.phantom(domain, phantom_seed, **overrides)
        inversion, contexts = contexts_for_scan(models, pixels, report, args.seed, directions, tasks)
        own_inversion = getattr(models.generator, "inversion", "ddim")
        other_inversion = "ddpm" if own_inversion == "ddim" else "ddim"
        _, other_contexts = contexts_for_scan(models, pixels, report, args.seed, directions, tasks, other_inversion)
        with torch.no_grad():  # the oracle on the input scan at the generator's resolution
            scan_values = torch.sigmoid(models.oracle.logits(
                C.phantom_tensor(domain, phantom_seed, models.generator, **overrides)))[0].numpy()
        first_record = len(records)
        anchor = getattr(models.generator, "anchor", "reconstruction")  # as the explainer draws edits
        other_anchor = "scan" if anchor == "reconstruction" else "reconstruction"
        ours = {"max_nfe": DEFAULT_MAX_NFE, "anchor": anchor}
        methods = {"trajectory": get_method("trajectory", **ours),
                   UNCONFINED: get_method("trajectory", **ours, localise=False),
                   CROSSING: get_method("trajectory", **ours, shown="crossing"),
                   UNPRUNED: get_method("trajectory", **ours, prune=False),
                   OTHER_ANCHOR[anchor]: get_method("trajectory", max_nfe=DEFAULT_MAX_NFE, anchor=other_anchor),
                   OTHER_INVERSION[own_inversion]: get_method("trajectory", **ours),
                   "random": get_method("random", **ours),
                   "latent_shift": get_method("latent_shift"), "sdedit": get_method("sdedit")}
        for name, label, attribute in tasks:
            context, sign = contexts[(name, label)], C.sign_toward_opposite(truth, attribute)
            task = {"scan_seed": phantom_seed, "classifier": name, "target": label, "attribute": attribute,
                    "sign": sign, "reconstruction_error": float(inversion.error)}
            for method_name in METHODS:
                started = time.perf_counter()
                cf = methods[method_name].generate(context, models.attributes[attribute], sign)
                seconds = time.perf_counter() - started
                records.append({**task, **record(cf, models.oracle, attribute, sign, seconds)})
                if method_name == "sdedit":
                    records += [{**task, **r} for r in fixed_strength_records(cf, models.oracle, attribute, sign,
                                                                               models.steps)]
                if method_name == "trajectory":  # the unedited reconstruction: realism and identity floor
                    records.append({**task, **record(cf, models.oracle, attribute, sign, None,
                                                     method="no edit (reconstruction)",
                                                     image=to_hwc(inversion.reconstruction.clamp(0, 1)),
                                                     flipped=False, nfe=0)})
                    records.append({**task, **full_edit_record(cf, models.oracle, attribute, sign)})
                    started = time.perf_counter()
                    blend = methods[CROSSING].generate(context, models.attributes[attribute], sign)
                    records.append({**task, **record(blend, models.oracle, attribute, sign,
                                                     time.perf_counter() - started, method=CROSSING)})
                    started = time.perf_counter()
                    whole = methods[UNPRUNED].generate(context, models.attributes[attribute], sign)
                    records.append({**task, **record(whole, models.oracle, attribute, sign,
                                                     time.perf_counter() - started, method=UNPRUNED)})
                    started = time.perf_counter()
                    redrawn = methods[OTHER_ANCHOR[anchor]].generate(context, models.attributes[attribute], sign)
                    records.append({**task, **record(redrawn, models.oracle, attribute, sign,
                                                     time.perf_counter() - started, method=OTHER_ANCHOR[anchor])})
                    started, other = time.perf_counter(), OTHER_INVERSION[own_inversion]
                    redone = methods[other].generate(other_contexts[(name, label)], models.attributes[attribute], sign)
                    records.append({**task, **record(redone, models.oracle, attribute, sign,
                                                     time.perf_counter() - started, method=other)})
                    if sign == "remove":  # additions are never confined: the ablation is the same edit
                        started = time.perf_counter()
                        unconfined = methods[UNCONFINED].generate(context, models.attributes[attribute], sign)
                        records.append({**task, **record(unconfined, models.oracle, attribute, sign,
                                                         time.perf_counter() - started, method=UNCONFINED)})
            records.append({**task, **true_toggle_record(models, context, phantom_seed, overrides, attribute, sign)})
            intended = sign == "add"
            base = C.UNSEEN_SEED_BASE + REFERENCE_SEED_OFFSET + 100 * len(reference) + 1000 * args.seed
            reference += reference_features(models, attribute, intended, base, REFERENCE_PER_TASK, constraints)
            reference_second += reference_features(models, attribute, intended, base + 50_000, REFERENCE_PER_TASK,
                                                    constraints)
        for r in records[first_record:]:
            r["kept_vs_scan"] = kept_against_scan(models.oracle, scan_values, r["features"], r["attribute"])
        done += 1
        print(f"[{NAME}] {domain} scan {done}/{n} ({total.elapsed:.0f}s)", flush=True)
    result.update(n_scans=done, n_planned=n, budget_limited=budget.stopped_early, records=records,
                  summary=summarise(records, reference, reference_second), n_reference=len(reference))
    return result


def method_order(records: list[dict]) -> list[str]:
    names = list(dict.fromkeys(r["method"] for r in records))
    first = [m for m in METHODS if m in names]
    return first + sorted(m for m in names if m not in first and m.startswith("sdedit@")) + \
        [m for m in names if m not in first and not m.startswith("sdedit@")]


def summarise(records: list[dict], reference: list, reference_second: list) -> list[dict]:
    rows = []
    for method in method_order(records):
        mine = [r for r in records if r["method"] == method]
        flips = [r for r in mine if r["flipped"]]
        edited = [r["edited"] for r in mine if r["edited"] is not None]
        clean = [r["clean_edit"] for r in mine if r.get("clean_edit") is not None]
        rows.append({"method": method, "n": len(mine), "flip_rate": sum(r["flipped"] for r in mine) / len(mine),
                     "l1_at_flip": C.mean([r["l1"] for r in flips]), "ssim_at_flip": C.mean([r["ssim"] for r in flips]),
                     "identity": C.mean([r["identity"] for r in mine]),
                     "edited": float(np.mean(edited)) if edited else None,
                     "clean_edit": float(np.mean(clean)) if clean else None,
                     "kept_vs_scan": C.mean([float(r["kept_vs_scan"]) for r in mine if "kept_vs_scan" in r]),
                     "fid": frechet([r["features"] for r in mine], reference),
                     "nfe": C.mean([r["nfe"] for r in mine]), "seconds": C.mean([r["seconds"] for r in mine])})
    rows.append({"method": "real phantoms (second draw)", "n": len(reference_second), "flip_rate": None,
                 "l1_at_flip": None, "ssim_at_flip": None, "identity": None, "edited": None, "clean_edit": None,
                 "kept_vs_scan": None, "fid": frechet(reference_second, reference), "nfe": None, "seconds": None})
    return rows


def removal_rows(records: list[dict]) -> list[tuple[str, int, float, float, float]]:
    """(method, N, flip rate, edited, clean edit) over the removal edits, for ours, its ablation and the truth."""
    rows = []
    for method in ("trajectory", UNCONFINED, TRUE_TOGGLE):
        mine = [r for r in records if r["method"] == method and r["sign"] == "remove"]
        if mine:
            rows.append((method, len(mine), float(np.mean([r["flipped"] for r in mine])),
                         float(np.mean([bool(r["edited"]) for r in mine])),
                         float(np.mean([bool(r["clean_edit"]) for r in mine]))))
    return rows


LABELS = {"trajectory": "ours (trajectory)", "latent_shift": "Latent Shift", "sdedit": "SDEdit (search)",
          "random": "random direction (control)"}


def goals(domains: dict) -> list[dict]:
    out = []
    for domain, result in domains.items():
        for row in result.get("summary", []):
            if row["method"] == "trajectory":
                out.append(C.goal_row(f"{domain}: ours flips >= 90% of the edits", row["flip_rate"],
                                      row["flip_rate"] >= 0.9, f"N = {row['n']} counterfactuals"))
                if row.get("clean_edit") is not None:
                    out.append(C.goal_row(f"{domain}: ours: the oracle sees the intended change and every other "
                                          "attribute unchanged", row["clean_edit"], row["clean_edit"] >= 0.9,
                                          f"met = at least 90% of {row['n']} counterfactuals"))
        random = {r["method"]: r for r in result.get("summary", [])}
        if "trajectory" in random and "random" in random:
            ours, control = random["trajectory"]["flip_rate"], random["random"]["flip_rate"]
            out.append(C.goal_row(f"{domain}: ours flips more often than a random direction",
                                  f"{ours:.2f} vs {control:.2f}", ours > control))
    return out


def plot(domains: dict, out: Path) -> str | None:
    plt = C.matplotlib_pyplot()
    shown = {d: r for d, r in domains.items() if r.get("summary")}
    if not shown:
        return None
    keys = [("flip_rate", "flip rate"), ("ssim_at_flip", "SSIM at the flip"), ("identity", "identity kept (oracle)"),
            ("fid", "Fréchet distance (oracle features)")]
    fig, axes = plt.subplots(len(shown), len(keys), figsize=(4.2 * len(keys), 3.3 * len(shown)), squeeze=False)
    for row_axes, (domain, result) in zip(axes, shown.items()):
        rows = [r for r in result["summary"]]
        names = [LABELS.get(r["method"], r["method"]) for r in rows]
        for ax, (key, title) in zip(row_axes, keys):
            values = [r[key] if r[key] is not None else 0.0 for r in rows]
            colors = ["tab:red" if r["method"] == "trajectory" else "tab:gray" for r in rows]
            ax.barh(range(len(rows)), values, color=colors)
            ax.set_yticks(range(len(rows)), names if key == "flip_rate" else [""] * len(rows), fontsize=7)
            ax.invert_yaxis()
            ax.set_title(f"{domain}: {title}", fontsize=9)
    return C.save_figure(fig, out, f"bench_{NAME}")


def markdown(domains: dict, goal_rows: list[dict], figure: str | None, args, argv, budget: C.Budget) -> list[str]:
    lines = C.header("Counterfactual quality against baselines", f"{NAME}.py", argv, args, [
        f"Wall time: {budget.elapsed:.0f} s (process CPU time {budget.cpu:.0f} s; shared machine)" + (" (stopped by --budget-s: N below is what fitted)"
                                                if budget.stopped_early else "") + "."])
    lines += ["Same unseen phantom scans, same inversion (prompt = the phantom's report caption), same classifier "
              "and edit for every method. Edit = the task's attribute toward the opposite of the scan's truth "
              "(remove if present, add if absent). L1 and SSIM compare the counterfactual with the method's own "
              "unedited image, over flipped counterfactuals only. *identity* = share of the other attributes "
              "whose oracle reading is unchanged (binary: same side of 0.5; continuous: within "
              f"{CONTINUOUS_TOLERANCE}); *attribute edited* = the oracle reads the edited attribute in its "
              "intended state. Realism = Fréchet distance of oracle logits against real unseen phantoms with the "
              f"intended attribute state ({REFERENCE_PER_TASK} per edit; few samples, so it is a coarse, biased "
              "estimate: compare rows, not with published FIDs; 'real phantoms (second draw)' is the noise floor). "
              "`sdedit@s` rows are SDEdit at one fixed strength s (the images of its sweep); NFE = UNet "
              "sample-evaluations per counterfactual (ours and the random control after the shared inversion). "
              f"*{UNCONFINED}*: the same removals with no DiffEdit region (the `localise` ablation; additions are "
              f"never confined, so they are not repeated). Ours shows a flip with the first swap-step sample that "
              "flips (its minimal strength is still the crossing on the Bézier curve), pruned to the fewest parts "
              "of its edit that still flip the decision, pasted onto the unedited image (`xcounter.edit_pruning`; a "
              "removal refilled there at the unedited image's levels where the generator sets `fill_removals`, "
              "`xcounter.removal_fill`); "
              f"*{UNPRUNED}*: the sample itself, a whole generator output (the `prune` ablation); "
              f"*{CROSSING}*: the curve itself at the crossing, a blend of two samples' latents (the "
              f"`shown` ablation). *{OTHER_INVERSION['ddim']}* (or *{OTHER_INVERSION['ddpm']}*, for a generator "
              "that inverts with DDPM): ours from the inversion the generator does not use by default, with its own "
              "reconstruction as the unedited image (DDPM inversion's is the VAE's round trip of the scan; its noisy "
              "latents are drawn with the benchmark seed, and which draw it is moves this row by several points). "
              f"*{OTHER_ANCHOR['reconstruction']}* (or *{OTHER_ANCHOR['scan']}*, for a generator that draws onto the "
              "scan): ours drawn onto what the generator does not use by default; drawn onto the scan, a "
              "counterfactual is the scan plus what the edit changed (sample minus reconstruction) and its unedited "
              "image is the scan itself. *no edit (reconstruction)*: the generator's reconstruction, compared with "
              "ours' own unedited image. "
              f"*{FULL_EDIT}*: the same trajectory's strongest edit "
              "instead of its flip (how clean the generator's whole edit is; the goal is read at the flip shown). "
              f"*{TRUE_TOGGLE}*: the phantom redrawn with only the attribute toggled, no generator involved; "
              "its 'all else kept' is how far the oracle lets this score go. *all else as in the scan*: every "
              "attribute but the edited one reads on the counterfactual as on the input scan itself, not the "
              "method's own unedited image: it also charges what the inversion lost (on the *no edit "
              "(reconstruction)* row it is how often the reconstruction keeps the whole scan).", ""]
    for domain, result in domains.items():
        tasks = "; ".join(f"{c}: {a} -> {t}" for c, t, a in result["tasks"]) or "none (classifiers missing)"
        lines += [f"**{domain}** ({result.get('n_scans', 0)} scans; edits: {tasks}; reference set "
                  f"{result.get('n_reference', 0)} real phantoms)", ""]
        rows = [[LABELS.get(r["method"], r["method"]), r["n"], r["flip_rate"], r["l1_at_flip"], r["ssim_at_flip"],
                 r["identity"], r["edited"], r.get("clean_edit"), r.get("kept_vs_scan"), r["fid"], r["nfe"],
                 r["seconds"]]
                for r in result.get("summary", [])]
        lines += C.table(["method", "N", "flip rate", "L1 at flip", "SSIM at flip", "identity kept",
                          "attribute edited (oracle)", "edited, all else kept (oracle)",
                          "all else as in the scan (oracle)", "Fréchet distance", "mean NFE",
                          "seconds per counterfactual"], rows)
        removals = removal_rows(result.get("records", []))
        if removals:
            lines += ["Removals only (the edits `localise` confines), flip rate / attribute edited / edited and all else "
                      "kept: " + "; ".join(f"{LABELS.get(m, m)} {f:.2f} / {e:.2f} / {c:.2f} (N = {n})"
                                           for m, n, f, e, c in removals) + ".", ""]
        ours = [r for r in result.get("records", []) if r["method"] == "trajectory"]
        if ours:
            counts = Counter(name for r in ours for name in r.get("changed", []))
            seen = ", ".join(f"{name} {k}" for name, k in counts.most_common()) or "none"
            lines += [f"Ours: other attributes the oracle saw change, counted over {len(ours)} counterfactuals: "
                      f"{seen}.", ""]
        if result["models"]["missing_classifiers"]:
            lines += [f"Missing from the zoo: {', '.join(result['models']['missing_classifiers'])}.", ""]
    return lines + C.closing(goal_rows, figure, "quality")


def main(argv: Sequence[str] | None = None) -> dict:
    return C.run_domain_benchmark(NAME, argv, C.parser(__doc__.splitlines()[0]), run_domain=run_domain, goals=goals,
                                  plot=plot, markdown=markdown)


if __name__ == "__main__":
    main()
