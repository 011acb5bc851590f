"""Tables and the plot of benches/density.py, from its results.json.

    benches/density_report.py [--out target/density] [--docs docs] [--run ID]

Reports one run of density.py (the last one unless --run): for every
figure a table of medians with the smallest and largest value over the
run's rounds, written to OUT/table.md, and docs/perf-density.png.
"""

import argparse
import json
import os
import statistics

NAMES = {"hearth": "Hearth", "qemu": "QEMU", "firecracker": "Firecracker"}
COLORS = {"hearth": "#c0392b", "qemu": "#7f8c8d", "firecracker": "#e67e22"}


def name(system):
    if system.startswith("hearth:"):
        return f"Hearth ({system.split(':', 1)[1]})"
    return NAMES.get(system, system)


def stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def fmt(s, scale=1.0, digits=2):
    if s is None:
        return "n/a"
    return (f"{s['median'] * scale:.{digits}f} "
            f"({s['min'] * scale:.{digits}f}–{s['max'] * scale:.{digits}f})")


def by_key(trials):
    """{(system, n): [trial, ...]} with trials in round order."""
    out = {}
    for t in sorted(trials, key=lambda t: t["round"]):
        out.setdefault((t["system"], t["n"]), []).append(t)
    return out


def own_kib(t):
    """PSS of the VMM(s) beyond the guest RAM mappings' PSS."""
    return t["pss_kib"] - t["guest_pss_kib"]


def per_extra(groups, system, n, value):
    """(value at N - value at 1) / (N - 1), round by round."""
    if n == 1:
        return None
    ones = {t["round"]: t for t in groups.get((system, 1), [])}
    vals = [(value(t) - value(ones[t["round"]])) / (n - 1)
            for t in groups.get((system, n), []) if t["round"] in ones and t.get("up") == n]
    return stats(vals)


def figure(groups, systems, counts, title, cell):
    lines = [title, "", "| N | " + " | ".join(name(s) for s in systems) + " |",
             "|---|" + "---|" * len(systems)]
    for n in counts:
        lines.append(f"| {n} | " + " | ".join(cell(s, n, groups.get((s, n), []))
                                               for s in systems) + " |")
    return lines + [""]


def growth(groups, systems, counts):
    """How the time to start all N grew from the N before: the ratio of
    the medians, and round by round (median, min–max), against N's."""
    lines = ["#### Growth of the time to start all N from the N before: ratio of medians; "
             "round by round median (min–max)", "",
             "| N | N's ratio | " + " | ".join(name(s) for s in systems) + " |",
             "|---|---|" + "---|" * len(systems)]

    def start(t):
        return t.get("start_s") if t.get("up") == t["n"] else None

    for before, n in zip(counts, counts[1:]):
        cells = []
        for s in systems:
            a = {t["round"]: start(t) for t in groups.get((s, before), [])}
            b = {t["round"]: start(t) for t in groups.get((s, n), [])}
            ma, mb = stats(list(a.values())), stats(list(b.values()))
            per_round = stats([b[r] / a[r] for r in b if b[r] and a.get(r)])
            cells.append("n/a" if not (ma and mb and per_round) else
                         f"{mb['median'] / ma['median']:.2f}; {fmt(per_round)}")
        lines.append(f"| {before} → {n} | {n / before:.2f} | " + " | ".join(cells) + " |")
    return lines + [""]


def tables(run, trials):
    groups = by_key(trials)
    systems = [s for s in run["systems"] if any(k[0] == s for k in groups)]
    counts = run["counts"]
    rounds = max(t["round"] for t in trials) + 1
    cores = len(run["cpus"])
    head = (f"{run['scenario']} test guests of {run['memory_mib']} MiB, 1 vCPU each, every VMM "
            f"process on host CPU(s) {run['cpus']}; {rounds} rounds, median (min–max)")

    def up(ts, key, scale=1.0, digits=2):
        s = stats([t.get(key) for t in ts if t.get("up") == t["n"]])
        missing = sum(1 for t in ts if t.get("up") != t["n"])
        return fmt(s, scale, digits) + (f" ({missing} not all up)" if missing else "")

    out = [f"Density run {run['id']}: {head}.", ""]
    out += figure(groups, systems, counts, "#### Time to start all N (s)",
                  lambda s, n, ts: up(ts, "start_s", digits=3))
    out += growth(groups, systems, counts)
    out += figure(groups, systems, counts,
                  "#### When the first / the median VM printed its first line (s)",
                  lambda s, n, ts: fmt(stats([t.get("first_up_s") for t in ts]), digits=3) + " / "
                  + fmt(stats([t.get("median_up_s") for t in ts]), digits=3))
    out += figure(groups, systems, counts, "#### VM starts per second per core (N / time to start all N / cores)",
                  lambda s, n, ts: fmt(stats([t["n"] / t["start_s"] / cores for t in ts
                                              if t.get("start_s")]), digits=0))
    out += figure(groups, systems, counts,
                  "#### One more VM while the N spin: from asking for it to its first guest line (s)",
                  lambda s, n, ts: fmt(stats([t.get("one_more_s") for t in ts]), digits=3))
    out += figure(groups, systems, counts, "#### Stop: SIGTERM to the (last) exit (s)",
                  lambda s, n, ts: fmt(stats([t["stop_s"] for t in ts]), digits=3))
    out += figure(groups, systems, counts, "#### Total RSS / PSS of the VMM process(es) (MiB)",
                  lambda s, n, ts: fmt(stats([t["rss_kib"] for t in ts]), 1 / 1024, 1) + " / "
                  + fmt(stats([t["pss_kib"] for t in ts]), 1 / 1024, 1))
    out += figure(groups, systems, counts, "#### PSS per VM: total / N (MiB)",
                  lambda s, n, ts: fmt(stats([t["pss_kib"] / n for t in ts]), 1 / 1024, 3))
    out += figure(groups, systems, counts,
                  "#### PSS per extra VM: (PSS(N) − PSS(1)) / (N − 1) (MiB); beyond guest RAM",
                  lambda s, n, ts: "" if n == 1 else
                  fmt(per_extra(groups, s, n, lambda t: t["pss_kib"]), 1 / 1024, 3) + "; "
                  + fmt(per_extra(groups, s, n, own_kib), 1 / 1024, 3))
    out += figure(groups, systems, counts, "#### Guest RAM PSS, all VMs (MiB) and threads",
                  lambda s, n, ts: fmt(stats([t["guest_pss_kib"] for t in ts]), 1 / 1024, 1)
                  + "; " + fmt(stats([t["threads"] for t in ts]), digits=0))
    hearths = [s for s in systems if s.startswith("hearth")]
    if hearths:
        out += figure(groups, hearths, counts,
                      "#### Hearth's event loop: scheduler tick lateness p50 / p99 / max (µs); missed ticks of ticks",
                      lambda s, n, ts: " / ".join(
                          fmt(stats([(t.get("tick_late_us") or {}).get(q) for t in ts]), digits=0)
                          for q in ("p50", "p99", "max")) + "; "
                      + fmt(stats([t.get("missed_ticks") for t in ts]), digits=0) + " of "
                      + fmt(stats([t.get("ticks") for t in ts]), digits=0))
    loads = [t["load_before"] for t in trials]
    out.append(f"1-minute load average before the trials: {min(loads):.1f}–{max(loads):.1f} "
               f"(median {statistics.median(loads):.1f}).")
    return "\n".join(out), groups, systems, counts


def plot(groups, systems, counts, run, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(17, 4.2))
    panels = (
        (axes[0], "time to start all N (s)", lambda t: t.get("start_s") if t.get("up") == t["n"] else None),
        (axes[1], "one more VM while N spin: to its first line (s)", lambda t: t.get("one_more_s")),
        (axes[2], "SIGTERM to exit (s)", lambda t: t["stop_s"]),
        (axes[3], "PSS per VM, total / N (MiB)", lambda t: t["pss_kib"] / t["n"] / 1024),
    )
    for ax, label, value in panels:
        for s in systems:
            xs, med, lo, hi = [], [], [], []
            for n in counts:
                st = stats([value(t) for t in groups.get((s, n), [])])
                if st:
                    xs.append(n)
                    med.append(st["median"])
                    lo.append(st["median"] - st["min"])
                    hi.append(st["max"] - st["median"])
            base = s.split(":")[0]
            ax.errorbar(xs, med, yerr=[lo, hi], marker="o", capsize=3, label=name(s),
                        color=COLORS.get(base, "#2c3e50"),
                        linestyle="--" if ":" in s else "-")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N VMs")
        ax.set_title(label, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Density: {run['scenario']} test guests, {run['memory_mib']} MiB each, "
                 f"all on host CPU(s) {run['cpus']} (median, min–max)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(results, out, docs, run_id=None):
    runs = results.get("runs") or []
    if not runs:
        return "no runs"
    run = runs[-1] if run_id is None else runs[run_id]
    trials = [t for t in results["trials"] if t.get("run_id") == run["id"]]
    if not trials:
        return f"run {run['id']} has no trials"
    md, groups, systems, counts = tables(run, trials)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(md + "\n")
    os.makedirs(docs, exist_ok=True)
    plot(groups, systems, counts, run, os.path.join(docs, "perf-density.png"))
    return md


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(root, "target", "density"))
    ap.add_argument("--docs", default=os.path.join(root, "docs"))
    ap.add_argument("--run", type=int, default=None)
    args = ap.parse_args()
    with open(os.path.join(args.out, "results.json")) as f:
        results = json.load(f)
    print(report(results, args.out, args.docs, args.run))


if __name__ == "__main__":
    main()
