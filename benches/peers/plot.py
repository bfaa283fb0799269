"""Draws the pictures of BENCHMARKS.md from the records of one `cargo bench --bench peers
-- --records` run (scripts/bench runs it with the bench venv's matplotlib):

  python plot.py RECORDS_DIR OUTPUT_DIR [PREFIX]

RECORDS_DIR holds what the bench wrote: peers-scenarios.txt (the scenarios, in order),
and per scenario <name>.reloads.csv (every request of the run with reloads: start_us,
latency_us, client, outcome, pid) and <name>.reloads.events.csv (every reload: sent_us,
returned_us, first_new_us, replaced_us). It writes to OUTPUT_DIR, under names that begin
with PREFIX (default BENCHMARKS; the takeover's run: BENCHMARKS-takeover):

  BENCHMARKS-latency.svg   latency of `/` over time across the reloads, one panel per
                           scenario: p99 and max per 250 ms, keep-alive and fresh
                           connections; failed requests as red ticks; each reload from
                           its trigger (dashed line) to every serving process new (shaded),
                           its trigger's return (▼) and the first answer of a new process
                           (green line)
  BENCHMARKS-failures.svg  failed requests per reload by scenario and client (reset,
                           refused or closed early), timeouts apart
"""

import csv
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

BIN_US = 250_000
plt.rcParams["svg.fonttype"] = "none"  # text stays text: small files, searchable
plt.rcParams["font.size"] = 8


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def percentile(values, q):
    values = sorted(values)
    return values[max(0, math.ceil(len(values) * q) - 1)]


def series(records, client):
    """(bin start in s, p99 ms, max ms) per bin of the successful requests of client."""
    bins = {}
    for r in records:
        if r["client"] == client and r["outcome"] == "Ok":
            bins.setdefault(int(r["start_us"]) // BIN_US, []).append(int(r["latency_us"]) / 1e3)
    keys = sorted(bins)
    xs = [k * BIN_US / 1e6 for k in keys]
    return xs, [percentile(bins[k], 0.99) for k in keys], [max(bins[k]) for k in keys]


def us(v):
    return int(v) / 1e6 if v else None


def latency(names, records_dir, out, prefix):
    fig, axes = plt.subplots(
        len(names), 1, figsize=(9, 1.55 * len(names) + 0.6), sharex=True, squeeze=False
    )
    end = 0.0
    for ax, name in zip(axes[:, 0], names):
        records = read(records_dir / f"{name}.reloads.csv")
        end = max([end] + [int(r["start_us"]) / 1e6 for r in records[-1:]])
        events = read(records_dir / f"{name}.reloads.events.csv")
        for client, colour, label in [
            ("keepalive", "tab:blue", "keep-alive"),
            ("fresh", "tab:orange", "fresh connection"),
        ]:
            xs, p99, mx = series(records, client)
            ax.plot(xs, p99, color=colour, lw=1, label=f"p99, {label}")
            ax.plot(xs, mx, color=colour, lw=0.6, alpha=0.35, label=f"max, {label}")
        failed = [int(r["start_us"]) / 1e6 for r in records if r["outcome"] != "Ok"]
        ax.set_yscale("log")
        top = ax.get_ylim()[1]
        if failed:
            ax.plot(failed, [top] * len(failed), "|", color="red", ms=7, label="failed request")
        for e in events:
            sent, back = us(e["sent_us"]), us(e["returned_us"])
            first, done = us(e["first_new_us"]), us(e["replaced_us"])
            ax.axvline(sent, color="black", ls="--", lw=0.7)
            ax.axvspan(sent, done or back, color="grey", alpha=0.15, lw=0)
            ax.plot([back], [top], "v", color="black", ms=4)
            if first is not None:
                ax.axvline(first, color="tab:green", lw=0.9)
        ax.set_ylim(top=top * 1.5)
        n = len(failed)
        ax.set_title(f"{name}: {len(events)} reloads, {n} failed requests", loc="left", fontsize=8)
        ax.set_ylabel("ms")
    # A reload still under way when the run ended is drawn up to the end of the run.
    axes[-1, 0].set_xlim(0, end + 0.5)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    for ax in axes[1:, 0]:  # a panel without failures has no red tick: take it elsewhere
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    fig.legend(handles, labels, loc="upper center", ncol=5, frameon=False)
    axes[-1, 0].set_xlabel(
        "seconds into the run (dashed: trigger sent, ▼ it returned, green: first answer "
        "from a new process, shaded: until every serving process was new)"
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))
    fig.savefig(out / f"{prefix}-latency.svg")


def failures(names, records_dir, out, prefix):
    rows = []
    for name in names:
        records = read(records_dir / f"{name}.reloads.csv")
        reloads = max(1, len(read(records_dir / f"{name}.reloads.events.csv")))
        count = {"keepalive": 0, "fresh": 0, "slow": 0, "timeout": 0}
        for r in records:
            if r["outcome"] == "Timeout":  # a stall (or a starved machine), not a drop
                count["timeout"] += 1
            elif r["outcome"] != "Ok":
                count[r["client"]] += 1
        rows.append((name, {k: v / reloads for k, v in count.items()}))
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(rows) + 1.0))
    ys = range(len(rows))
    left = [0.0] * len(rows)
    for client, colour, label in [
        ("keepalive", "tab:blue", "keep-alive on /"),
        ("fresh", "tab:orange", "fresh connection on /"),
        ("slow", "tab:purple", "/slow?ms=300"),
        ("timeout", "lightgrey", "timeout (no answer in 2 s), any client"),
    ]:
        widths = [r[1][client] for r in rows]
        ax.barh(ys, widths, left=left, color=colour, label=label)
        left = [a + b for a, b in zip(left, widths)]
    for y, total in zip(ys, left):
        ax.text(total, y, f" {total:.1f}", va="center")
    ax.set_yticks(list(ys), [r[0] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("failed requests per reload")
    ax.set_xlim(right=max(left + [1.0]) * 1.15)
    ax.legend(frameon=False, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / f"{prefix}-failures.svg")


def main():
    records_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    prefix = sys.argv[3] if len(sys.argv) > 3 else "BENCHMARKS"
    names = (records_dir / "peers-scenarios.txt").read_text().split()
    latency(names, records_dir, out, prefix)
    failures(names, records_dir, out, prefix)
    print(f"plot: {out / (prefix + '-latency.svg')}, {out / (prefix + '-failures.svg')}")


if __name__ == "__main__":
    main()
