"""Markdown tables of a `compare.sh cluster` run (see cluster.sh).

    python3 clusterreport.py OUT

Reads OUT/meta.json (the run's settings and shapes) and the bench's JSON
of every run: OUT/WORKLOAD-PROTO-SHAPE-ROUND.json for closed loop,
WORKLOAD-open-SHAPE-ROUND.json for open loop, WORKLOAD-visnew-SHAPE.json
and WORKLOAD-visexisting-SHAPE.json for visibility, and
WORKLOAD-udp-SHAPE-ROUND.perf for system call counts.
Ratios compare each shape with the single node of the same round, so
noise that moved the machine between rounds cancels out.
"""

import json
import os
import statistics
import sys


def load(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def ms(us):
    """Microseconds as milliseconds, or - when nothing was measured."""
    return f"{us / 1e3:.2f}" if us else "-"


def med_range(xs, fmt="{:.1f}"):
    if not xs:
        return "-"
    m = fmt.format(statistics.median(xs))
    if len(xs) == 1:
        return m
    return f"{m} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def drops(run):
    """Everything a node or the kernel dropped in a run."""
    n = sum(v for node in run.get("nodes", []) for v in node.get("faults", {}).values())
    return n + sum(d["drops"] for d in run.get("socket_drops", []))


def validity(runs):
    bad = [r for r in runs if r.get("invalid")]
    if not bad:
        return "valid"
    return f"**INVALID** ({len(bad)} of {len(runs)})"


def recvmmsg_calls(path):
    """The recvmmsg calls perf stat -x, counted: (all, that returned
    datagrams), or None."""
    if not os.path.exists(path):
        return None
    counts = {}
    with open(path) as f:
        for line in f:
            fields = line.strip().split(",")
            if len(fields) > 2 and fields[2].startswith("syscalls:sys_"):
                try:
                    counts[fields[2]] = float(fields[0])
                except ValueError:
                    return None
    calls, full = counts.get("syscalls:sys_enter_recvmmsg"), counts.get("syscalls:sys_exit_recvmmsg")
    if not calls or not full:
        return None
    return calls, full


class Report:
    def __init__(self, out):
        self.out = out
        self.meta = load(os.path.join(out, "meta.json"))
        self.shapes = self.meta["shapes"]
        self.rounds = range(1, self.meta["rounds"] + 1)
        self.targets = []  # (workload, figure, shape, value, target, met)

    def runs(self, wl, kind, k):
        rs = [load(os.path.join(self.out, f"{wl}-{kind}-{k}-{r}.json")) for r in self.rounds]
        return [r for r in rs if r is not None]

    def ratios(self, wl, kind, k, value):
        """Per round, shape k's value over the single node's."""
        out = []
        for r in self.rounds:
            a = load(os.path.join(self.out, f"{wl}-{kind}-{k}-{r}.json"))
            b = load(os.path.join(self.out, f"{wl}-{kind}-0-{r}.json"))
            if a and b and value(b):
                out.append(value(a) / value(b))
        return out

    def target(self, wl, figure, k, ratios, limit, valid):
        if k == 0 or self.shapes[k]["size"] < 3 or not ratios:
            return
        m = statistics.median(ratios)
        self.targets.append((wl, figure, self.shapes[k]["label"], f"{m:.2f} ×", f"≤ {limit} ×",
                             "met" if m <= limit and valid else ("**INVALID**" if not valid else "**missed**")))

    def prime(self, wl):
        """A line on loading the population into every shape."""
        parts = []
        for k, s in enumerate(self.shapes):
            p = load(os.path.join(self.out, f"{wl}-prime-{k}.json"))
            if p:
                note = "" if not p["invalid"] else " **INVALID**: " + "; ".join(p["invalid_reasons"])
                parts.append(f"{s['label']} {p['prime']['seconds']:.0f} s{note}")
        if parts:
            print("Primed (every peer announced once before the rounds): " + ", ".join(parts) + ".")

    def closed(self, wl, proto):
        print(f"\nClosed loop over {proto.upper()}, {self.meta['concurrency']} clients (medians of {len(self.rounds)} rounds, range in brackets):\n")
        if proto == "udp" and any(os.path.exists(os.path.join(self.out, f"{wl}-udp-0-{r}.perf")) for r in self.rounds):
            print("(Datagrams per recvmmsg: perf counts the threads a node has when the run starts, so a figure above 32 means some calls went uncounted.)\n")
        perf = proto == "udp" and any(
            os.path.exists(os.path.join(self.out, f"{wl}-udp-0-{r}.perf")) for r in self.rounds)
        head = "| shape | responses/s | server CPU per response (µs) | vs one node | p50 / p99 (ms) | peers per announce | errors+timeouts | drops | peak RSS (MiB) |"
        if perf:
            # perf stat -p counts the threads that exist when it starts; a
            # cluster node's threads started later are missed, which can
            # push a cluster's figure above the batch size.
            head += " datagrams per recvmmsg (empty calls) |"
        head += " run |"
        print(head)
        print("|" + " --- |" * (head.count("|") - 1))
        for k, s in enumerate(self.shapes):
            runs = self.runs(wl, proto, k)
            if not runs:
                continue
            cpu = [r["server"]["cpu_per_request_us"] for r in runs]
            ratios = self.ratios(wl, proto, k, lambda r: r["server"]["cpu_per_request_us"])
            row = (f"| {s['label']} | {statistics.median(r['responses_per_sec'] for r in runs):,.0f} "
                   f"| **{med_range(cpu)}** | {med_range(ratios, '{:.2f} ×') if k else ''} "
                   f"| {statistics.median(r['latency_us']['p50'] for r in runs) / 1e3:.2f} / "
                   f"{statistics.median(r['latency_us']['p99'] for r in runs) / 1e3:.2f} "
                   f"| {statistics.median(r['peers_per_announce'] for r in runs):.1f} "
                   f"| {sum(r['errors'] + r['timeouts'] for r in runs)} | {sum(drops(r) for r in runs):.0f} "
                   f"| {max(r['server']['peak_rss_bytes'] for r in runs) / 2**20:.0f} |")
            if perf:
                per, empty = [], []
                for r in self.rounds:
                    run = load(os.path.join(self.out, f"{wl}-udp-{k}-{r}.json"))
                    counted = recvmmsg_calls(os.path.join(self.out, f"{wl}-udp-{k}-{r}.perf"))
                    if run and counted:
                        calls, full = counted
                        per.append(run["responses"] / full)
                        empty.append(100 * (calls - full) / calls)
                row += f" {med_range(per)} ({med_range(empty, '{:.0f}%')}) |"
            print(row + f" {validity(runs)} |")
            valid = all(not r["invalid"] for r in runs)
            self.target(wl, f"CPU per response, {proto.upper()}", k, ratios, 1.5, valid)
            full = self.ratios(wl, proto, k, lambda r: r["peers_per_announce"])
            if k and s["size"] >= 3 and full:
                # Answers as full as one node's: the same peers per announce,
                # within 5% for the sampling of the workload.
                m = statistics.median(full)
                self.targets.append((wl, f"peers per announce, {proto.upper()}", s["label"], f"{m:.2f} × one node's", "≥ 0.95 ×",
                                     "**INVALID**" if not valid else ("met" if m >= 0.95 else "**missed**")))

    def open(self, wl):
        print(f"\nOpen loop over UDP at {self.meta['rate']} requests/s, the same offered load for every shape:\n")
        print("| shape | answered/s | server CPU per response (µs) | p50 / p99 / p99.9 (ms) | p99 vs one node | errors+timeouts | drops | run |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for k, s in enumerate(self.shapes):
            runs = self.runs(wl, "open", k)
            if not runs:
                continue
            lat = lambda key: statistics.median(r["latency_us"][key] for r in runs) / 1e3
            ratios = self.ratios(wl, "open", k, lambda r: r["latency_us"]["p99"])
            print(f"| {s['label']} | {statistics.median(r['requests_per_sec'] for r in runs):,.0f} "
                  f"| {med_range([r['server']['cpu_per_request_us'] for r in runs])} "
                  f"| {lat('p50'):.2f} / **{lat('p99'):.2f}** / {lat('p999'):.2f} "
                  f"| {med_range(ratios, '{:.2f} ×') if k else ''} "
                  f"| {sum(r['errors'] + r['timeouts'] for r in runs)} | {sum(drops(r) for r in runs):.0f} | {validity(runs)} |")
            self.target(wl, "p99 at the same offered load", k, ratios, 2, all(not r["invalid"] for r in runs))

    def memory(self, wl):
        print("\nSwarm memory after the closed-loop runs (last round over UDP; peers stored plus peers in read-cache copies):\n")
        print("| shape | fullest node holds | of the whole | its share (replicas ÷ nodes) | ratio (target ≤ 1.1) | copies of each peer | run |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for k, s in enumerate(self.shapes):
            runs = self.runs(wl, "udp", k)
            m = runs[-1].get("memory") if runs else None
            if not m:
                continue
            print(f"| {s['label']} | {m['max_held']:,.0f} | {m['max_held_share']:.3f} | {m['share']:.3f} "
                  f"| **{m['ratio']:.2f}** | {m['total_held'] / m['whole']:.2f} | {validity(runs[-1:])} |")
            if k and s["size"] >= 3:
                self.targets.append((wl, "memory per node", s["label"], f"{m['ratio']:.2f} × share", "≤ 1.1 × share",
                                     "**INVALID**" if runs[-1]["invalid"] else ("met" if m["ratio"] <= 1.1 else "**missed**")))

    def visibility(self, wl):
        rows = []
        for k, s in enumerate(self.shapes):
            for kind in ("new", "existing"):
                v = load(os.path.join(self.out, f"{wl}-vis{kind}-{k}.json"))
                if not v:
                    continue
                paths = ", ".join(f"{p} {ms(d['latency_us']['p99'])}" for p, d in (v.get("by_path") or {}).items())
                rows.append(f"| {s['label']} | {kind} | {v['seen'] + v['timeouts'] + v['errors']} | {ms(v['latency_us']['p50'])} "
                            f"| **{ms(v['latency_us']['p99'])}** | {ms(v['latency_us']['max'])} "
                            f"| {v['timeouts'] + v['errors']} | {paths or '-'} | {'valid' if not v['invalid'] else '**INVALID**'} |")
                p99 = v["latency_us"]["p99"] / 1e3
                self.targets.append((wl, f"visibility p99, {kind} swarms", s["label"], f"{ms(v['latency_us']['p99'])} ms", "≤ 2 ms",
                                     "**INVALID**" if v["invalid"] else ("met" if p99 <= 2 else "**missed**")))
        if rows:
            print("\nA peer announced at one node handed out by another (`karuta bench visibility`, UDP, every ordered pair, "
                  "idle cluster; in a new swarm, or in one the reading node already serves; ms):\n")
            print("| shape | swarms | rounds | p50 | p99 | max | timeouts+errors | p99 by path | run |")
            print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
            print("\n".join(rows))

    def summary(self):
        if not self.targets:
            return
        print("\nIssue 18's targets in this run (medians of the per-round ratios to one node):\n")
        print("| workload | figure | shape | measured | target | |")
        print("| --- | --- | --- | --- | --- | --- |")
        for t in self.targets:
            print("| " + " | ".join(t) + " |")

    def write(self):
        m = self.meta
        for zipf in m["zipf"]:
            wl = f"z{zipf}"
            what = "uniform popularity" if float(zipf) == 0 else f"Zipf({zipf}) popularity"
            print(f"\n### {what}, {m['swarms']:,} swarms, {m['peers']:,} peers\n")
            self.prime(wl)
            for proto in m["protos"]:
                self.closed(wl, proto)
            if str(m["rate"]) != "0":
                self.open(wl)
            self.memory(wl)
            self.visibility(wl)
        self.summary()
        print(f"\nLoad average: {m.get('loadavg_start', '?')} at the start, {m.get('loadavg_end', '?')} at the end.")


if __name__ == "__main__":
    Report(sys.argv[1]).write()
