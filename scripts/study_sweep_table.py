"""The hint-noise sweep of the testbed study as two markdown tables: final held-out success per (method, hint noise,
seed), and differences paired by seed against GRPO and against the same method with reliable hints.

    python scripts/study_sweep_table.py runs/study       # the OUT folder of scripts/testbed_study.sh
"""
import json
import sys
from pathlib import Path

from sdar.study_stats import paired_comparison

root = Path(sys.argv[1])
def finals(part, method):
    out = {}
    for s in range(5):
        f = root / part / method / f"seed{s}" / "eval" / "eval.json"
        if f.is_file():
            d = json.loads(f.read_text())
            out[s] = float(d["summary"]["success"]["mean"])
    return out
rows = {(p, m): finals(p, m) for p in ("p0", "p0.3", "p0.6") for m in ("grpo", "sdar", "grpo_opsd", "opsd")}
print("| method | p | " + " | ".join(f"seed {s}" for s in range(5)) + " | mean |")
print("|---|---|" + "---:|" * 6)
for (p, m), v in rows.items():
    if v:
        print(f"| {m} | {p[1:]} | " + " | ".join(f"{v[s]:.1f}" if s in v else "–" for s in range(5)) + f" | {sum(v.values())/len(v):.1f} |")
print()
print("| row | against | seeds | mean difference (pp) | 95% CI (paired bootstrap) | p (sign-flip) |")
print("|---|---|---:|---:|---:|---:|")
base = rows[("p0", "grpo")]
for (p, m), v in rows.items():
    if v and (p, m) != ("p0", "grpo"):
        for name, ref in (("GRPO p=0", base), (f"{m} p=0", rows[("p0", m)])):
            if ref is v or not ref: continue
            c = paired_comparison(v, ref)
            i = c.interval
            print(f"| {m} at p = {p[1:]} | {name} | {len(c.seeds)} | {i.mean:+.1f} | [{i.lo:+.1f}, {i.hi:+.1f}] | {c.p_value:.3f} |")
