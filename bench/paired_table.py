"""`make data-free` and `make qat`'s tables: groups of stored runs (model or export artifacts) side by
side per seed, and paired tests between them.

Each --group is LABEL|REFS|ACC[|SIZE|LATENCY]: REFS comma-separated in seed order; ACC, SIZE and
LATENCY name a figure of each artifact (its metrics, else its latency record), e.g. test_acc,
int8_file_bytes, runtime_b64. Each --test is "A > B" (one-sided: A better than B) or "A vs B" (two-sided),
paired by seed (kdcli.stats: paired t-test, Wilcoxon signed-rank, the difference's 95% CI). The
groups' training data may differ (synthetic inputs): `kdcli compare` refuses that, so pairing here
is by seed, each group tested on the same test split (the script checks the test set sizes agree).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from kdcli import stats
from kdcli.store import Store, default_root


def figure(manifest: dict, key: str) -> float:
    for section in ("metrics", "latency"):
        value = (manifest.get(section) or {}).get(key)
        if isinstance(value, (int, float)):
            return float(value)
    raise SystemExit(f"error: artifact has no figure {key!r}")


def load_group(store: Store, spec: str) -> dict:
    label, refs, *keys = spec.split("|")
    manifests = [store.get(ref).manifest for ref in refs.split(",")]
    # an export's seed is its model's
    seeds = [m["seed"] if m.get("seed") is not None else store.get(m["parents"]["model"]).manifest.get("seed")
             for m in manifests]
    names = ("acc", "size", "latency")
    return {"label": label, "seeds": seeds, "tested_on": {str((m.get("data") or {}).get("test")) for m in manifests},
            **{name: [figure(m, key) for m in manifests] for name, key in zip(names, keys, strict=False)}}


def render(groups: list[dict], tests: list[str], title: str) -> str:
    seeds = groups[0]["seeds"]
    for group in groups:
        if group["seeds"] != seeds:
            raise SystemExit(f"error: group {group['label']!r} has seeds {group['seeds']}, not {seeds}")
    sizes = set().union(*(g["tested_on"] for g in groups))
    if len(sizes) > 1:
        raise SystemExit(f"error: the groups were tested on test sets of different sizes {sorted(sizes)}")
    lines = [f"### {title}", "", "| seed | " + " | ".join(g["label"] for g in groups) + " |",
             "|---|" + "---|" * len(groups)]
    for i, seed in enumerate(seeds):
        lines.append(f"| {seed} | " + " | ".join(f"{g['acc'][i]:.2f}" for g in groups) + " |")
    lines.append("| mean ± std | " + " | ".join(f"{statistics.fmean(g['acc']):.2f} ± {statistics.stdev(g['acc']):.2f}"
                                               for g in groups) + " |")
    if any("size" in g for g in groups):
        lines.append("| size (bytes) | " + " | ".join(f"{statistics.fmean(g['size']):,.0f}" if "size" in g else ""
                                                      for g in groups) + " |")
    if any("latency" in g for g in groups):
        lines.append("| latency (ms) | " + " | ".join(f"{statistics.fmean(g['latency']):.3f}" if "latency" in g else ""
                                                      for g in groups) + " |")
    by_label = {g["label"]: g for g in groups}
    lines += ["", "| test | mean difference [95% CI] | paired t p | Wilcoxon p | wins |", "|---|---|---|---|---|"]
    for test in tests:
        one_sided = " > " in test
        a, b = test.split(" > " if one_sided else " vs ", 1)
        x, y = by_label[a]["acc"], by_label[b]["acc"]
        c = stats.paired_comparison(x, y, "greater" if one_sided else "two-sided")
        wins = sum(p > q for p, q in zip(x, y, strict=True))
        lines.append(f"| {a} {'>' if one_sided else 'vs'} {b} ({'one' if one_sided else 'two'}-sided) | "
                     f"{c['mean_diff']:+.2f} [{c['diff_ci_low']:+.2f}, {c['diff_ci_high']:+.2f}] | {c['t_p']:.3g} | "
                     f"{c['wilcoxon_p']:.3g} | {wins} of {len(x)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", action="append", required=True, help="LABEL|REFS|ACC[|SIZE|LATENCY]")
    parser.add_argument("--test", action="append", default=[], help='"A > B" (one-sided) or "A vs B" (two-sided)')
    parser.add_argument("--title", default="test accuracy per seed (%)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here (markdown)")
    parser.add_argument("--store", type=Path, default=None, help="artifact store (default: KDCLI_STORE or ./artifacts)")
    args = parser.parse_args()
    store = Store(args.store or default_root())
    table = render([load_group(store, spec) for spec in args.group], args.test, args.title)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
