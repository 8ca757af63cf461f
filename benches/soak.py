#!/usr/bin/env python3
"""Soak benchmark (not a test): the daemon on replay for a long time with faults on a schedule.

    python3 benches/soak.py --ustad target/release/ustad --duration 3600 --out /tmp/soak

Runs `ustad run` on a looping replay of real MTD images at a paced rate and, in a repeating
cycle, injects the faults that issue 14 found:

  corrupt    one replay file becomes a truncated JPEG, then random bytes, then a PNG whose
             header declares 20000x20000 pixels (a decompression bomb), then is deleted;
             each is a part the daemon cannot judge and must fail safe
  disk-full  the archive's file system (a private tmpfs when run as root) is filled to the
             last byte, then freed: records may be lost while it is full, and must be counted
  reload     SIGHUP with a good config (sensitivity changed), then with a broken one (must be
             refused, the running config kept)
  http       a Content-Length of 99999999999, 200 pipelined requests that are never read, and
             20 half-sent requests held open, while /healthz must still answer

Every --sample seconds it records the daemon's RSS (/proc/PID/status) and its /status
counters. At the end it stops the daemon with SIGTERM and checks, printing a report and
writing soak.json and soak.csv under --out:

  - memory is flat: RSS at the end within --max-rss-growth-mb of RSS after the first cycle
  - no part is lost: every frame the source delivered got a verdict (judged or failed safe)
  - every archive record on disk is a whole JSON line, and archive write failures happened
    only while the disk was full (and were counted)
  - the daemon answered /healthz (200 or 503) within 3 s during every HTTP abuse phase
  - every good reload was applied and every bad one refused

Exits 1 if any check fails. Only the Python standard library is needed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ustad", type=Path, default=target / "release" / "ustad")
    p.add_argument("--bundle", type=Path, default=REPO / "models" / "bundles" / "mtd-edge")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "mtd" / "test")
    p.add_argument("--images", type=int, default=20, help="replayed images (a mix of classes)")
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=3600.0, help="seconds")
    p.add_argument("--cycle", type=float, default=180.0,
                   help="seconds per fault cycle (at least the faults' own time)")
    p.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--port", type=int, default=9187)
    p.add_argument("--max-rss-growth-mb", type=float, default=20.0)
    p.add_argument("--out", type=Path, default=Path("/tmp/ustad-soak"))
    return p.parse_args()


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out: Path = args.out
        self.replay = self.out / "replay"
        self.archive_root = self.out / "archive-fs"
        self.config = self.out / "soak.toml"
        self.url = f"http://127.0.0.1:{args.port}"
        self.samples: list[dict] = []
        self.events: list[dict] = []
        self.full_windows: list[tuple[float, float]] = []
        self.health_waits: list[float] = []
        self.reloads_expected = {"good": 0, "bad": 0}
        self.tmpfs = False
        self.corrupt_injected = 0
        self.proc: subprocess.Popen | None = None
        self.start = 0.0

    # ---- setup -------------------------------------------------------------------------
    def prepare(self) -> None:
        if self.out.exists():
            self.unmount()
            shutil.rmtree(self.out)
        self.replay.mkdir(parents=True)
        self.archive_root.mkdir()
        files = sorted(p for p in self.args.data.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
        if not files:
            sys.exit(f"{self.args.data}: no images")
        random.Random(0).shuffle(files)
        for i, f in enumerate(files[: self.args.images]):
            shutil.copy(f, self.replay / f"{i:04d}{f.suffix.lower()}")
        self.good_frame = next(self.replay.glob("*.jpg")).read_bytes()
        self.fault_file = self.replay / "9999_fault.jpg"
        self.fault_file.write_bytes(self.good_frame)
        if os.geteuid() == 0:
            r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs",
                                str(self.archive_root)], capture_output=True, text=True)
            self.tmpfs = r.returncode == 0
            if not self.tmpfs:
                print(f"no tmpfs for the archive ({r.stderr.strip()}): disk-full phase skipped")
        else:
            print("not root: no private tmpfs, disk-full phase skipped")
        self.write_config(sensitivity=1.0)

    def write_config(self, sensitivity: float, broken: bool = False) -> None:
        text = f"""
[camera]
source = "replay"
path = "{self.replay}"
fps = {self.args.fps}
loop = true

[model]
bundle = "{self.args.bundle.resolve()}"
precision = "f32"
sensitivity = {sensitivity}

[trigger]
mode = "free-run"

[reject]
actuator = "log-only"
line = "GPIO17"
pulse_ms = 50
delay_ms = 3000

[failsafe]
policy = "reject"
frame_budget_ms = 2500

[archive]
dir = "{self.archive_root / 'archive'}"
max_bytes = 16777216
keep_rejected = true

[http]
listen = "127.0.0.1:{self.args.port}"

[log]
level = "warn"
"""
        if broken:
            text = text.replace("[trigger]", "[trigger\n")
        self.config.write_text(text)

    def unmount(self) -> None:
        if self.archive_root.exists() and os.path.ismount(self.archive_root):
            subprocess.run(["umount", str(self.archive_root)], check=False)

    # ---- daemon ------------------------------------------------------------------------
    def launch(self) -> None:
        log = open(self.out / "daemon.log", "w")
        self.proc = subprocess.Popen([str(self.args.ustad), "run", "--config", str(self.config)],
                                     stdout=log, stderr=subprocess.STDOUT)
        self.start = time.monotonic()
        for _ in range(600):
            if self.proc.poll() is not None:
                sys.exit(f"the daemon exited at start: see {self.out / 'daemon.log'}")
            try:
                self.status()
                return
            except OSError:
                time.sleep(0.1)
        sys.exit("the daemon's HTTP endpoint never came up")

    def now(self) -> float:
        return time.monotonic() - self.start

    def status(self) -> dict:
        with urllib.request.urlopen(self.url + "/status", timeout=5) as r:
            return json.load(r)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def sample(self, phase: str) -> None:
        try:
            counters = self.status()["counters"]
        except OSError as e:
            self.events.append({"t": self.now(), "event": f"status unreachable: {e}"})
            return
        self.samples.append({
            "t": round(self.now(), 1), "phase": phase, "rss_mb": round(self.rss_mb(), 1),
            "frames": counters["frames"], "parts": counters["parts"],
            "failsafe": sum(counters["failsafe"].values()),
            "archive_errors": counters["archive_errors"],
            "reloads": counters["reloads"], "reload_failures": counters["reload_failures"],
        })

    def wait(self, seconds: float, phase: str) -> None:
        end = self.now() + seconds
        while self.now() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon died (exit {self.proc.returncode}) during {phase}")
            last = self.samples[-1]["t"] if self.samples else -1e9
            if self.now() - last >= self.args.sample:
                self.sample(phase)
            time.sleep(min(1.0, max(0.0, end - self.now())))

    # ---- faults ------------------------------------------------------------------------
    def corrupt(self) -> None:
        bomb = bytearray(self.out.joinpath("bomb.png").read_bytes())
        for name, data in [("truncated", self.good_frame[: len(self.good_frame) // 3]),
                           ("garbage", random.Random(1).randbytes(50_000)),
                           ("bomb", bytes(bomb))]:
            self.fault_file.write_bytes(data)
            self.events.append({"t": self.now(), "event": f"corrupt frame: {name}"})
            self.wait(self.loop_s(), "corrupt")
        self.corrupt_injected += 4
        self.fault_file.unlink()
        self.events.append({"t": self.now(), "event": "replay file deleted"})
        self.wait(self.loop_s(), "corrupt")
        self.fault_file.write_bytes(self.good_frame)

    def loop_s(self) -> float:
        """One pass over the replay folder (the fault file is played once per pass)."""
        return (self.args.images + 1) / self.args.fps + 1.0

    def disk_full(self) -> None:
        if not self.tmpfs:
            return
        filler = self.archive_root / "filler"
        began = self.now()
        # Unbuffered: a buffered writer keeps what did not fit and raises ENOSPC again on close.
        with open(filler, "wb", buffering=0) as f:
            try:
                while f.write(b"\0" * (1 << 16)):
                    pass
            except OSError:
                pass
        self.events.append({"t": began, "event": "archive disk full"})
        self.wait(max(30.0, self.loop_s()), "disk-full")
        filler.unlink()
        # A record being written when the space came back may still fail: allow one period.
        self.full_windows.append((began, self.now() + 2.0 / self.args.fps + 2.0))
        self.events.append({"t": self.now(), "event": "archive disk freed"})

    def reload(self) -> None:
        self.write_config(sensitivity=random.Random(len(self.events)).choice([0.95, 1.05]))
        self.proc.send_signal(signal.SIGHUP)
        self.reloads_expected["good"] += 1
        self.events.append({"t": self.now(), "event": "SIGHUP good config"})
        self.wait(5.0, "reload")
        self.write_config(sensitivity=1.0, broken=True)
        self.proc.send_signal(signal.SIGHUP)
        self.reloads_expected["bad"] += 1
        self.events.append({"t": self.now(), "event": "SIGHUP broken config"})
        self.wait(5.0, "reload")
        self.write_config(sensitivity=1.0)

    def health_wait(self) -> float:
        began = time.monotonic()
        try:
            urllib.request.urlopen(self.url + "/healthz", timeout=10).read()
        except urllib.error.HTTPError:
            pass  # 503 is an answer: degraded health during faults is expected
        except OSError:
            return float("inf")
        return time.monotonic() - began

    def http_abuse(self) -> None:
        host, port = "127.0.0.1", self.args.port
        held = []
        huge = socket.create_connection((host, port), timeout=5)
        huge.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\nabc")
        held.append(huge)
        pipe = socket.create_connection((host, port), timeout=5)
        pipe.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
        held.append(pipe)
        for _ in range(20):
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        self.events.append({"t": self.now(), "event": "HTTP abuse"})
        for _ in range(5):
            self.health_waits.append(self.health_wait())
            self.wait(2.0, "http")
        for s in held:
            s.close()

    # ---- run and report ----------------------------------------------------------------
    def run(self) -> int:
        self.prepare()
        write_bomb(self.out / "bomb.png")
        self.launch()
        cycle = 0
        try:
            while self.now() < self.args.duration:
                phase_start = self.now()
                for fault in (self.corrupt, self.disk_full, self.reload, self.http_abuse):
                    fault()
                    if self.now() >= self.args.duration:
                        break
                cycle += 1
                self.wait(max(0.0, self.args.cycle - (self.now() - phase_start)), "quiet")
            self.sample("end")
            final = self.status()["counters"]
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        finally:
            if self.proc and self.proc.poll() is None:
                self.proc.kill()
        report = self.check(final, cycle)
        self.unmount()
        return report

    def check(self, final: dict, cycles: int) -> int:
        records, broken = count_records(self.archive_root / "archive")
        after_first_cycle = [s for s in self.samples if s["t"] >= self.args.cycle] or self.samples
        rss_start, rss_end = after_first_cycle[0]["rss_mb"], self.samples[-1]["rss_mb"]
        rss_peak = max(s["rss_mb"] for s in self.samples)
        errors_outside = 0
        for before, after in zip(self.samples, self.samples[1:]):
            if after["archive_errors"] > before["archive_errors"] and not any(
                    a <= after["t"] and before["t"] <= b for a, b in self.full_windows):
                errors_outside += after["archive_errors"] - before["archive_errors"]
        judged = sum(final["verdicts"].values())
        checks = {
            "memory flat": rss_end - rss_start <= self.args.max_rss_growth_mb,
            "every injected bad frame failed safe":
                sum(final["failsafe"].values()) >= self.corrupt_injected,
            "every frame got a verdict": final["parts"] >= final["frames"] - 1 and judged == final["parts"],
            "archive index whole": broken == 0,
            "archive losses only while full, and counted": errors_outside == 0,
            "/healthz answered within 3 s under abuse": all(w <= 3.0 for w in self.health_waits),
            "good reloads applied": final["reloads"] >= self.reloads_expected["good"],
            "bad reloads refused": final["reload_failures"] >= self.reloads_expected["bad"],
        }
        summary = {
            "command": " ".join(sys.argv),
            "duration_s": round(self.now(), 1), "cycles": cycles, "fps": self.args.fps,
            "rss_mb": {"after_first_cycle": rss_start, "end": rss_end, "peak": rss_peak},
            "frames": final["frames"], "parts": final["parts"], "verdicts": final["verdicts"],
            "failsafe_by_reason": {k: v for k, v in final["failsafe"].items() if v},
            "source_errors": final["source_errors"],
            "bad_frames_injected": self.corrupt_injected,
            "archive": {"records_on_disk": records, "broken_lines": broken,
                        "write_failures_counted": final["archive_errors"],
                        "failures_outside_full_windows": errors_outside,
                        "disk_full_phases": len(self.full_windows)},
            "reloads": {"applied": final["reloads"], "refused": final["reload_failures"],
                        "expected": self.reloads_expected},
            "healthz_max_wait_s": round(max(self.health_waits, default=0.0), 3),
            "checks": checks,
            "events": self.events,
        }
        (self.out / "soak.json").write_text(json.dumps(summary, indent=2))
        with open(self.out / "soak.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(self.samples[0]))
            w.writeheader()
            w.writerows(self.samples)
        print(json.dumps({k: v for k, v in summary.items() if k != "events"}, indent=2))
        failed = [name for name, ok in checks.items() if not ok]
        for name in failed:
            print(f"error: soak check failed: {name}", file=sys.stderr)
        return 1 if failed else 0


def count_records(archive: Path) -> tuple[int, int]:
    """Whole and broken JSON lines over the archive's part indexes."""
    whole = broken = 0
    for index in sorted(archive.rglob("ustad-*-parts.jsonl")):
        for line in index.read_bytes().split(b"\n"):
            if not line:
                continue
            try:
                json.loads(line)
                whole += 1
            except ValueError:
                broken += 1
    return whole, broken


def write_bomb(path: Path) -> None:
    """A PNG whose header declares 20000x20000 8-bit greyscale pixels over a tiny zlib stream."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    side = 20_000
    row = b"\0" + b"\0" * side
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(64)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data)
                     + chunk(b"IEND", b""))


if __name__ == "__main__":
    args = parse_args()
    if not args.ustad.is_file():
        sys.exit(f"{args.ustad}: no ustad binary (cargo build --release -p ustad, or pass --ustad)")
    sys.exit(Soak(args).run())
