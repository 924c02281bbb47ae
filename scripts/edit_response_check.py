"""How a generator's UNet responds to the explainer's edited embedding, against the renderer's own toggle.

For phantom pairs (A, and A with one attribute toggled), noised to t: the x_0 change the UNet predicts when the
source embedding is swapped for the explainer's edited one, against the true latent change z_B - z_A; prints
(cosine, norm ratio) per attribute and t.  Usage: python scripts/edit_response_check.py cxr phantom-cxr [DIR ...]
"""
import sys, numpy as np, torch, torch.nn.functional as F
from diffusers import DDPMScheduler
from xcounter.attributes import load_attributes
from xcounter.generators import load_generator
from xcounter.phantoms import caption, make_phantom, sample_attributes
from xcounter.disentangle.directions import LanguageDirections
from xcounter.disentangle.prompt_edit import spliced_embedding
from xcounter.disentangle.trajectories import edited_embedding, resolve_edit_settings
torch.set_num_threads(1)
domain = sys.argv[1]
for spec in sys.argv[2:]:
    gen = load_generator(spec)
    attrs = load_attributes(domain)
    dirs = LanguageDirections(gen, attrs, disentangle=True).fit().directions_
    sched = DDPMScheduler.from_config(gen.scheduler.config)
    res = {}
    for name in ["chest_tube", "pleural_effusion", "pacemaker"] if domain == "cxr" else ["ruler", "blue_white_veil", "ink_marking"]:
        a = attrs[name]
        cos_all = {600: [], 300: []}
        for i in range(8):
            seed = 9_000_000 + i
            truth = sample_attributes(domain, seed)
            present = bool(truth[name]); sign = "remove" if present else "add"
            pa, ta = make_phantom(domain, seed, size=128)
            pb, tb = make_phantom(domain, seed, size=128, **{name: not present})
            cap = caption(ta, domain, np.random.default_rng(seed))
            imgs = torch.from_numpy(np.stack([pa, pb])).permute(0, 3, 1, 2).float() / 255.0
            imgs = F.interpolate(imgs, size=(gen.resolution,) * 2, mode="area").clamp(0, 1)
            with torch.no_grad():
                z = gen.encode(imgs)
                src = gen.embed([cap])[0]
                r = a.restated(cap, sign)
                base = src if r is None else spliced_embedding(gen, cap, r, src)
                alpha, _ = resolve_edit_settings(None, None, gen, a.kind)
                e = edited_embedding(base, dirs[name], sign, alpha)
                for T in cos_all:
                    t = torch.tensor([T])
                    noise = torch.randn(z[:1].shape, generator=torch.Generator().manual_seed(i))
                    x = sched.add_noise(z[:1], noise, t)
                    ab = sched.alphas_cumprod[T]
                    ea = gen.unet(x, t, encoder_hidden_states=src[None]).sample
                    eb = gen.unet(x, t, encoder_hidden_states=e[None]).sample
                    # x0 difference predicted vs true
                    dpred = -(1 - ab).sqrt() / ab.sqrt() * (eb - ea)
                    dtrue = z[1:] - z[:1]
                    cos = F.cosine_similarity(dpred.flatten(), dtrue.flatten(), dim=0).item()
                    ratio = (dpred.norm() / dtrue.norm()).item()
                    cos_all[T].append((cos, ratio))
        res[name] = {T: (round(np.mean([c for c, _ in v]), 3), round(np.mean([r for _, r in v]), 3)) for T, v in cos_all.items()}
    print(spec, res, flush=True)
