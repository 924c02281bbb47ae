"""Does a shortcut flag survive when only the edit's strongest pixels (the drawn device) are pasted onto the
reconstruction? Per flag of the faithfulness benchmark's scans, against the renderer's own confirmation.

The measurement behind `xcounter.confirmation` (the rule since the eighteenth session, fraction 0.15; numbers in
docs/CONTRACTS.md, Engine, `confirm_shortcuts`): the CXR generator's device additions also brighten the lungs,
which the classifiers read as opacity; the device's own pixels alone often do not flip. The explainer runs with
the check off so every flag is measured. Hybrids at |difference| >= q * max for q in QS, then the same dilated by
one pixel.
Usage: python scripts/core_pixel_check.py cxr|skin N_SCANS OUT.json [SKIP_FIRST_N]
"""
import json, sys
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common as C, faithfulness as F
from xcounter.explainer import Explainer
from xcounter.search import is_flipped, DEFAULT_FLIP_MARGIN
from scipy import ndimage

domain = sys.argv[1]; n = int(sys.argv[2]); out = sys.argv[3]
QS = (0.15, 0.25, 0.4, 0.6)
wanted = [name for ladder in C.SHORTCUTS[domain].values() for name in ladder.values()] + [C.CLEAN_CLASSIFIERS[domain]]
models = C.load_domain(domain, "shipped", wanted, need_oracle=True)
rows = F.classifier_rows(domain, models)
parts = {(r["classifier"], r["label"]): models.classifiers[r["classifier"]] for r in rows}
combined = C.combine(domain, [(name, clf, label) for (name, label), clf in parts.items()])
ex = Explainer(combined, models.generator, models.attributes, attribution=False, oracle=models.oracle,
               confirm_shortcuts=False)
targets = list(dict.fromkeys(r["target"] for r in rows))
found = []
skip = int(sys.argv[4]) if len(sys.argv) > 4 else 0
for k, (seed, over) in enumerate(C.scan_plan(domain, n, 0)):
    if k < skip:
        continue
    pixels, truth, report = C.phantom(domain, seed, **over)
    e = ex.explain(pixels, target=targets, report_text=report, seed=0)
    F.without_mediation(e)
    margins = F.renderer_margins(models, combined, e, seed, over)
    recon = e.reconstruction
    for t in targets:
        index = combined.target_index(t)
        pred = e.prediction(t)
        for r in e.ranking_for(t):
            if r.verdict != "shortcut":
                continue
            cf = next(c for c in r.counterfactuals if c.sign == r.sign and c.flipped)
            d = cf.image - recon
            mag = np.abs(d).max(axis=-1)
            hybrids = []
            for q in QS:
                core = mag >= q * mag.max()
                hybrids.append(recon + d * core[..., None])
            for q in QS:  # dilated by one pixel
                core = ndimage.binary_dilation(mag >= q * mag.max())
                hybrids.append(recon + d * core[..., None])
            batch = torch.from_numpy(np.stack(hybrids)).permute(0, 3, 1, 2).float().clamp(0, 1)
            with torch.no_grad():
                m = combined.margins(batch)[:, index].float().numpy()
                m0 = float(combined.margins(torch.from_numpy(recon).permute(2, 0, 1)[None].float())[0, index])
            kept = [bool(is_flipped(float(x), m0 > 0, DEFAULT_FLIP_MARGIN)) for x in m]
            confirmed = F.renderer_confirms(margins, combined, t, r.attribute, r.sign)
            share = [float((mag >= q * mag.max()).mean()) for q in QS]
            found.append({"seed": seed, "target": t, "attribute": r.attribute, "sign": r.sign,
                          "confirmed": bool(confirmed), "kept": kept, "share": share,
                          "strength": r.minimal_strength})
            print(seed, t, r.attribute, r.sign, "confirmed" if confirmed else "UNCONF", kept, flush=True)
    json.dump(found, open(out, "w"))
