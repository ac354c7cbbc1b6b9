#!/usr/bin/env python3
"""Downloads a torrent between two real BitTorrent clients that can only
meet through trackers.

Two libtorrent sessions run in this process on loopback, with DHT, LSD, UPnP
and NAT-PMP off. The seeder's torrent knows only --seed-tracker and the
leecher's only --leech-tracker, so the leecher can find the seeder only if
the tracker(s) behind the two URLs share the swarm. The seeder announces
first; the leecher is added once the seeder's tracker has answered.

On success prints one JSON line to stdout and exits 0. On a timeout or a
data mismatch prints diagnostics (torrent states, tracker alerts, peers) to
stderr and exits 1. Progress goes to stderr.

Usage:
  realclient.py --seed-tracker URL --leech-tracker URL --workdir DIR
                --timeout SECONDS [--size BYTES] [--piece-size BYTES]
"""

import argparse
import hashlib
import json
import os
import sys
import time

import libtorrent as lt

# Alerts kept for the diagnostics, newest last.
MAX_EVENTS = 200

# How often the leecher re-announces while it has no peer. A real client
# waits for the tracker's interval; a test cannot, and in a cluster the
# seeder may reach the leecher's node only after the first announce.
REANNOUNCE_EVERY = 1.0


START = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - START:7.3f}s] {msg}", file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed-tracker", required=True, help="the only tracker URL the seeder announces to")
    p.add_argument("--leech-tracker", required=True, help="the only tracker URL the leecher announces to")
    p.add_argument("--workdir", required=True, help="directory for the payload, the .torrent and the download")
    p.add_argument("--timeout", type=float, required=True, help="seconds for the whole run")
    p.add_argument("--size", type=int, default=4 << 20, help="payload bytes (default 4 MiB)")
    p.add_argument("--piece-size", type=int, default=256 << 10, help="piece bytes, a power of two >= 16 KiB (default 256 KiB)")
    return p.parse_args()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_payload(seed_dir, size):
    """Writes size random bytes to seed_dir/payload.bin; returns its name and SHA-256."""
    name = "payload.bin"
    with open(os.path.join(seed_dir, name), "wb") as f:
        left = size
        while left > 0:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n
    return name, sha256_file(os.path.join(seed_dir, name))


def make_torrent(seed_dir, name, piece_size, torrent_path):
    """Creates a torrent for seed_dir/name with no tracker in it: each session
    is given its own tracker when the torrent is added."""
    fs = lt.file_storage()
    lt.add_files(fs, os.path.join(seed_dir, name))
    ct = lt.create_torrent(fs, piece_size)
    ct.set_creator(f"karuta realclient test, libtorrent {lt.__version__}")
    lt.set_piece_hashes(ct, seed_dir)
    data = lt.bencode(ct.generate())
    with open(torrent_path, "wb") as f:
        f.write(data)
    return lt.torrent_info(torrent_path)


def new_session(label):
    settings = {
        "listen_interfaces": "127.0.0.1:0",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # Both clients share 127.0.0.1.
        "allow_multiple_connections_per_ip": True,
        # The leecher re-announces while it has no peer; the tracker's
        # min interval is minutes.
        "min_announce_interval": 1,
        "stop_tracker_timeout": 2,
        "peer_fingerprint": "-KR0001-",
        "user_agent": f"karuta-realclient-{label}/libtorrent {lt.__version__}",
        "alert_mask": (
            lt.alert.category_t.error_notification
            | lt.alert.category_t.status_notification
            | lt.alert.category_t.tracker_notification
            | lt.alert.category_t.connect_notification
            | lt.alert.category_t.storage_notification
        ),
    }
    ses = lt.session(settings)
    return ses


class Client:
    """One libtorrent session with one torrent, and the alerts it has seen."""

    def __init__(self, label):
        self.label = label
        self.ses = new_session(label)
        self.handle = None
        self.events = []
        self.replies = 0
        self.peers_seen = {}

    def add(self, ti, save_path, tracker, seed):
        atp = lt.add_torrent_params()
        atp.ti = ti
        atp.save_path = save_path
        atp.trackers = [tracker]
        flags = lt.torrent_flags.default_flags
        flags &= ~lt.torrent_flags.auto_managed
        flags &= ~lt.torrent_flags.paused
        # Trackers are the only way for the two to meet: no DHT, LSD or PEX.
        flags |= lt.torrent_flags.disable_dht | lt.torrent_flags.disable_lsd | lt.torrent_flags.disable_pex
        if seed:
            # The payload was just hashed into the torrent: skip checking it
            # so the first announce already says left=0.
            flags |= lt.torrent_flags.seed_mode
        atp.flags = flags
        self.handle = self.ses.add_torrent(atp)

    def port(self):
        return self.ses.listen_port()

    def poll(self):
        """Drains alerts, remembering tracker and error ones, and records
        the current peers."""
        for a in self.ses.pop_alerts():
            kind = type(a).__name__
            if isinstance(a, lt.tracker_reply_alert):
                self.replies += 1
            if isinstance(a, lt.peer_connect_alert):
                self.peers_seen.setdefault(f"{a.ip[0]}:{a.ip[1]}", "connected")
            if isinstance(a, (lt.tracker_alert, lt.torrent_error_alert, lt.peer_error_alert,
                              lt.listen_failed_alert, lt.listen_succeeded_alert,
                              lt.torrent_finished_alert, lt.file_error_alert,
                              lt.peer_disconnected_alert, lt.peer_connect_alert)):
                line = f"{self.label}: {kind}: {a.message()}"
                log(line)
                self.events.append(line)
                del self.events[:-MAX_EVENTS]
        if self.handle is not None:
            for p in self.handle.get_peer_info():
                src = []
                for name in ("tracker", "dht", "pex", "lsd", "resume_data"):
                    if p.source & getattr(lt.peer_info, name):
                        src.append(name)
                if not p.flags & lt.peer_info.outgoing_connection:
                    src.append("incoming")
                self.peers_seen[f"{p.ip[0]}:{p.ip[1]}"] = "+".join(src) or "unknown"

    def status(self):
        s = self.handle.status()
        return {
            "state": str(s.state),
            "progress": round(s.progress, 4),
            "is_seeding": s.is_seeding,
            "num_peers": s.num_peers,
            "list_peers": s.list_peers,
            "total_payload_download": s.total_payload_download,
            "total_payload_upload": s.total_payload_upload,
            "current_tracker": s.current_tracker,
            "error": str(s.errc.message()) if s.errc.value() else "",
        }

    def trackers(self):
        out = []
        for t in self.handle.trackers():
            entry = {"url": t["url"], "endpoints": []}
            for ep in t.get("endpoints", []):
                for v, ih in zip(("v1", "v2"), ep.get("info_hashes", [])):
                    err = ih.get("last_error", {})
                    entry["endpoints"].append({
                        "local": ep.get("local_address"),
                        "hash": v,
                        "message": ih.get("message", ""),
                        "last_error": f"{err.get('category')}:{err.get('value')}" if isinstance(err, dict) else str(err),
                        "fails": ih.get("fails", 0),
                        "updating": ih.get("updating", False),
                        "start_sent": ih.get("start_sent", False),
                        "complete_sent": ih.get("complete_sent", False),
                        "scrape_complete": ih.get("scrape_complete", -1),
                        "scrape_incomplete": ih.get("scrape_incomplete", -1),
                    })
            out.append(entry)
        return out

    def diagnostics(self):
        d = {"label": self.label, "listen_port": self.port(), "peers_seen": self.peers_seen, "events": self.events}
        if self.handle is not None:
            d["status"] = self.status()
            try:
                d["trackers"] = self.trackers()
            except Exception as e:  # the layout of trackers() varies between versions
                d["trackers"] = f"unavailable: {e}"
        return d


def fail(msg, clients):
    log(f"FAIL: {msg}")
    for c in clients:
        c.poll()
        print(json.dumps(c.diagnostics(), indent=2, default=str), file=sys.stderr)
    print(json.dumps({"ok": False, "error": msg}))
    sys.exit(1)


def main():
    args = parse_args()
    deadline = START + args.timeout
    seed_dir = os.path.join(args.workdir, "seed")
    leech_dir = os.path.join(args.workdir, "leech")
    os.makedirs(seed_dir, exist_ok=True)
    os.makedirs(leech_dir, exist_ok=True)
    log(f"libtorrent {lt.__version__}; seed tracker {args.seed_tracker}; leech tracker {args.leech_tracker}")

    name, want = make_payload(seed_dir, args.size)
    ti = make_torrent(seed_dir, name, args.piece_size, os.path.join(args.workdir, "payload.torrent"))
    ihs = ti.info_hashes()
    log(f"torrent: {args.size} bytes, {ti.num_pieces()} pieces, v1 {ihs.v1}, v2 {ihs.v2}")

    seeder = Client("seeder")
    leecher = Client("leecher")
    clients = [seeder, leecher]

    # The seeder announces first, so the leecher's first announce can
    # already return it.
    seeder.add(ti, seed_dir, args.seed_tracker, seed=True)
    log(f"seeder listening on 127.0.0.1:{seeder.port()}")
    while seeder.replies == 0:
        if time.monotonic() > deadline:
            fail("the seeder got no tracker reply", clients)
        seeder.poll()
        time.sleep(0.05)

    leecher.add(ti, leech_dir, args.leech_tracker, seed=False)
    log(f"leecher listening on 127.0.0.1:{leecher.port()}")
    started = time.monotonic()
    last_reannounce = started
    while True:
        seeder.poll()
        leecher.poll()
        s = leecher.handle.status()
        if s.is_seeding:
            break
        now = time.monotonic()
        if now > deadline:
            fail("the leecher did not finish in time", clients)
        if s.num_peers == 0 and now - last_reannounce > REANNOUNCE_EVERY:
            leecher.handle.force_reannounce(0, -1, lt.reannounce_flags_t.ignore_min_interval)
            last_reannounce = now
        time.sleep(0.05)
    seconds = time.monotonic() - started
    seeder.poll()
    leecher.poll()
    log(f"leecher finished in {seconds:.3f}s; peers seen by the leecher: {leecher.peers_seen}")

    # With DHT, LSD and PEX out of the picture the only way to the data is a
    # peer from a tracker; a short download may connect and disconnect
    # between polls, so count payload rather than insist on seeing the peer.
    downloaded = leecher.handle.status().total_payload_download
    if downloaded < args.size:
        fail(f"the leecher finished after downloading {downloaded} of {args.size} bytes", clients)
    got = sha256_file(os.path.join(leech_dir, name))
    if got != want:
        fail(f"downloaded data differs: sha256 {got}, want {want}", clients)

    summary = {
        "ok": True,
        "libtorrent": lt.__version__,
        "bytes": args.size,
        "pieces": ti.num_pieces(),
        "seconds": round(seconds, 3),
        "sha256": want,
        "seeder_port": seeder.port(),
        "leecher_port": leecher.port(),
        "downloaded": downloaded,
        "leecher_peers": leecher.peers_seen,
        "seeder_tracker_replies": seeder.replies,
        "leecher_tracker_replies": leecher.replies,
    }
    # Removing the torrents sends the stopped announces before the sessions
    # go away.
    for c in clients:
        c.ses.remove_torrent(c.handle)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
