"""Waits until a cluster is formed and settled, as seen by every node.

    python3 clusterwait.py TIMEOUT_SECONDS METRICS_URL...

Polls each node's /cluster (beside its /metrics) until, on every node, the
gossip members and the ring both list exactly the given nodes, every
member is alive, the ring is settled (the last handoff pass moved all it
had to) and the node is whole (no swarm it gained is still waiting for
its handoff), three polls in a row. Exits 1, printing what each node last
said, if that does not happen within the timeout.
"""

import json
import sys
import time
import urllib.parse
import urllib.request

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def status_url(metrics):
    u = urllib.parse.urlsplit(metrics)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/cluster", "", ""))


def check(url, n):
    """Returns None if the node at url sees a whole, settled cluster of n,
    else what is missing."""
    try:
        with opener.open(url, timeout=2) as r:
            st = json.load(r)
    except Exception as e:  # refused, timed out, not JSON: not ready yet
        return f"{url}: {e}"
    ring = st.get("ring", {})
    members = st.get("members", [])
    alive = [m for m in members if m.get("state") == "alive"]
    if len(members) != n or len(alive) != n:
        return f"{url}: {len(alive)} of {len(members)} members alive, want {n}"
    if len(ring.get("members", [])) != n:
        return f"{url}: {len(ring.get('members', []))} ring members, want {n}"
    if not ring.get("settled"):
        return f"{url}: ring not settled"
    if not ring.get("whole"):
        return f"{url}: not whole yet"
    return None


def main():
    timeout = float(sys.argv[1])
    urls = [status_url(m) for m in sys.argv[2:]]
    deadline = time.monotonic() + timeout
    streak = 0
    while True:
        missing = [w for w in (check(u, len(urls)) for u in urls) if w]
        streak = 0 if missing else streak + 1
        if streak == 3:
            return 0
        if time.monotonic() > deadline:
            print("cluster not ready:", *missing, sep="\n  ", file=sys.stderr)
            return 1
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
