"""Model-card numbers for the shipped generators: inversion SSIM / MAE on held-out phantoms.

Run: python benchmarks/zoo_card.py  (writes reports/zoo/inversion.json)
"""
import json, sys, torch, numpy as np
import xcounter
from xcounter.phantoms import make_phantom
torch.set_num_threads(1)
out = {}
for dom in ["cxr", "skin"]:
    g = xcounter.load_generator(f"phantom-{dom}")
    ss, err = [], []
    for s in range(12):
        img, attrs = make_phantom(dom, 20_000_000 + s)
        from xcounter.phantoms.prompts import caption
        p = caption(attrs, dom, np.random.default_rng(s))
        inv = g.invert(torch.tensor(img).permute(2, 0, 1)[None], p)
        ss.append(inv.ssim); err.append(inv.error)
    out[dom] = {"inversion_ssim_mean": float(np.mean(ss)), "inversion_ssim_min": float(np.min(ss)), "inversion_mae_mean": float(np.mean(err)), "n": 12, "steps": g.steps}
    print(dom, out[dom], flush=True)
json.dump(out, open("reports/zoo/inversion.json", "w"), indent=1)
