"""SIP load through Kamailio and pns: the highest call rate with no failed call, and the latency
the switch adds.

Starts pns (embedded SQLite store by default, or --store postgresql://...), creates a customer and
a switch account, numbers and bindings, starts Kamailio with deploy/kamailio/kamailio.cfg, then
runs sipp at rising call rates (each for --duration seconds). A call is INVITE, 200, ACK, a hold
of --hold-ms, BYE, 200; the callee answers without 180 (several Kamailio workers may relay a 180
and a 200 out of order under load: sipp fails such a call, real phones do not).

For each rate it reports calls, failed calls, the latency the switch added to each INVITE (from
the caller sending it to the callee receiving it, paired by an X-Bench-Id header, both sides on
127.0.0.1: that is Kamailio plus the signed queryAXB round trip), and the CPU that Kamailio, pns
and the two sipp processes spent per call (from /proc and getrusage: a call's query, report and
callback delivery for pns; everything but the load generator for Kamailio). It stops after the
first rate with failed calls.

Kamailio runs as deploy/systemd/kamailio-pns.service runs it (settings in its environment,
`-x tlsf`). `--compare-with REV` runs, at each rate, the kamailio.cfg of git revision REV first
(settings as -A defines, the options of --before-args) and then the current one, against the same
pns: the machine is shared and noisy, so the ratio of the two figures measured back to back is
the number to trust, not either figure alone.

To compare two trees of pns itself, run each tree's copy of this file with
``PYTHONPATH=<tree>/src``: pns is started as ``python -m pns.cli``, which otherwise imports the
venv's installed pns (this checkout's), and both arms would measure the same code.

Everything runs on this machine (a lower bound). Not part of the test suite; run on purpose:

    .venv/bin/python bench/sip_load.py                       # SQLite, rates 50..800
    .venv/bin/python bench/sip_load.py --rates 100,200,300 --duration 10
    .venv/bin/python bench/sip_load.py --store postgresql://postgres@127.0.0.1:5432/pnsbench
    .venv/bin/python bench/sip_load.py --rates 200,400 --compare-with e832f48 --no-latency
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "src"))

from pns.client import PnsClient  # noqa: E402
from tests.sip.sipkit import (  # noqa: E402
    HOST,
    HarnessError,
    Kamailio,
    Sipp,
    free_port,
    require_binaries,
    stop_process,
    tail,
    write_csv,
)

TS = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)$")


def pns(store: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "pns.cli", *args, "--store", store],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise HarnessError(f"pns {' '.join(args[:2])}: {proc.stdout}{proc.stderr}")
    return proc.stdout


def account(store: str, name: str, role: str) -> dict[str, str]:
    out = pns(store, "account", "create", "--name", name, "--role", role)
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def cpu_seconds(root_pid: int) -> float:
    """User+system CPU of a process and all its descendants (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, [root_pid]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo += [p for p, pp in parent.items() if pp == pid]
    return total


def invite_times(path: Path, direction: str) -> dict[str, float]:
    """X-Bench-Id -> time (epoch s) of the first INVITE sent/received in a sipp message log."""
    out: dict[str, float] = {}
    stamp: float | None = None
    want = "message sent" if direction == "out" else "message received"
    with open(path, errors="replace") as log:
        state = 0  # 0: look for a separator, 1: title, 2: first line, 3: headers
        for line in log:
            m = TS.match(line.rstrip("\r\n"))
            if m:
                stamp = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
                state = 1
                continue
            if state == 1:
                state = 2 if want in line else 0
            elif state == 2:
                if line.strip():
                    state = 3 if line.startswith("INVITE ") else 0
            elif state == 3:
                if line.lower().startswith("x-bench-id:"):
                    key = line.split(":", 1)[1].strip()
                    if key not in out and stamp is not None:
                        out[key] = stamp
                    state = 0
                elif not line.strip():
                    state = 0
    return out


def final_counts(screen: Path) -> tuple[int, int]:
    """(successful, failed) calls from the last statistics screen sipp printed."""
    text = screen.read_text(errors="replace")
    ok = re.findall(r"Successful call\s*\|\s*\d+\s*\|\s*(\d+)", text)
    bad = re.findall(r"Failed call\s*\|\s*\d+\s*\|\s*(\d+)", text)
    return (int(ok[-1]) if ok else 0, int(bad[-1]) if bad else -1)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


@dataclass
class Step:
    rate: int
    calls: int
    ok: int
    failed: int
    p50_ms: float
    p95_ms: float
    max_ms: float
    kam_cpu_ms: float
    pns_cpu_ms: float
    sipp_cpu_ms: float


def run_step(work: Path, kam: Kamailio, gateway: int, pns_pid: int, rows: list[tuple[str, str]],
             rate: int, duration: float, hold_ms: int, trace: bool) -> Step:
    calls = int(rate * duration)
    csv = write_csv(work / f"load-{rate}.csv", rows)
    callee = Sipp(work, f"load-{rate}-callee", "uas_load.xml", port=gateway)
    caller = Sipp(work, f"load-{rate}-caller", "uac_load.xml")
    assert kam.proc is not None
    kam_cpu0, pns_cpu0 = cpu_seconds(kam.proc.pid), cpu_seconds(pns_pid)
    sipp_cpu0 = _children_cpu()
    callee.start("-recv_timeout", "10000", "-max_socket", "4096", trace=trace)
    try:
        caller.run(kam.port, "-inf", str(csv), "-m", str(calls), "-r", str(rate),
                   "-l", str(max(rate * 4, 100)), "-d", str(hold_ms), "-recv_timeout", "10000",
                   "-max_socket", "4096", timeout=duration + 60, trace=trace)
    finally:
        time.sleep(0.5)
        callee.stop()
    kam_cpu = cpu_seconds(kam.proc.pid) - kam_cpu0
    pns_cpu = cpu_seconds(pns_pid) - pns_cpu0
    sipp_cpu = _children_cpu() - sipp_cpu0  # the two sipp, waited for by now
    ok, failed = final_counts(caller.screen_log)
    lat: list[float] = []
    if trace:
        sent = invite_times(caller.message_log, "out")
        got = invite_times(callee.message_log, "in")
        lat = [(got[k] - t) * 1000 for k, t in sent.items() if k in got]
        for log in (caller.message_log, callee.message_log):
            log.unlink(missing_ok=True)  # large; keep the disk clean
    if failed < 0:
        failed = calls - ok
    return Step(rate, calls, ok, failed, percentile(lat, 0.5), percentile(lat, 0.95),
                max(lat, default=float("nan")), 1000 * kam_cpu / max(ok, 1),
                1000 * pns_cpu / max(ok, 1), 1000 * sipp_cpu / max(ok, 1))


def _children_cpu() -> float:
    """User+system CPU of the children this process has waited for (the sipp runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


_STRING_SETTINGS = {"PNS_URL", "PNS_ACCESS_KEY", "PNS_ACCESS_SECRET", "SIP_GATEWAY",
                    "SIP_TRUSTED", "SIP_IVR", "TOPOH_MASK_KEY", "TOPOH_MASK_IP"}


def start_kamailio(workdir: Path, settings: dict[str, str], shm_mb: int, kam_args: str,
                   config: Path | None = None) -> Kamailio:
    """Kamailio with the settings in its environment (as the systemd unit), or, for an older
    config given as `config` (which may not read the environment), as -A defines."""
    port = free_port()
    extra = kam_args.split()
    if config is None:
        kam = Kamailio(workdir, settings, port=port, shm_mb=shm_mb, extra_args=tuple(extra))
    else:
        for name, value in {**settings, "SIP_LISTEN": f"udp:{HOST}:{port}"}.items():
            extra += ["-A", f'{name}="{value}"' if name in _STRING_SETTINGS else f"{name}={value}"]
        kam = Kamailio(workdir, {}, port=port, shm_mb=shm_mb, extra_args=tuple(extra),
                       config=config)
    workdir.mkdir(parents=True, exist_ok=True)
    kam.start()
    return kam


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", help="pns store URL (default: SQLite in a temporary folder)")
    ap.add_argument("--rates", default="50,100,200,300,400,600,800,1000,1200,1500",
                    help="calls per second, comma-separated, tried in order")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    ap.add_argument("--hold-ms", type=int, default=1000, help="call hold time")
    ap.add_argument("--bindings", type=int, default=200)
    ap.add_argument("--pns-workers", type=int, default=1, help="pns serve --workers")
    ap.add_argument("--shm-mb", type=int, default=512, help="Kamailio shared memory (-m)")
    ap.add_argument("--no-latency", action="store_true",
                    help="no sipp message logs (no latency figures, a little less load)")
    ap.add_argument("--keep-going", action="store_true", help="do not stop at the first failure")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, SQLite store)")
    ap.add_argument("--kamailio-args", default="-x tlsf",
                    help="more kamailio options (default: those of the systemd unit)")
    ap.add_argument("--children", type=int, help="SIP_CHILDREN (default: the config's)")
    ap.add_argument("--workers", type=int, help="PNS_WORKERS (default: the config's)")
    ap.add_argument("--compare-with", metavar="REV",
                    help="also run the kamailio.cfg of this git revision, before each step")
    ap.add_argument("--before-args", default="",
                    help="kamailio options for the --compare-with config (default: none)")
    args = ap.parse_args()

    try:
        require_binaries("kamailio", "sipp")
    except HarnessError as exc:
        print(exc, file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="pns-sip-load-"))
    store = args.store or f"sqlite:///{work / 'pns.db'}"
    tag = f"{random.randrange(10**6):06d}"
    rnd = random.Random()
    # numbers unique to this run (a PostgreSQL store may hold earlier runs)
    xs_prefix = f"8523{rnd.randrange(100, 1000)}"
    xs = [f"{xs_prefix}{i:01d}" for i in range(10)]
    print(f"work dir {work}{'' if args.keep else ' (removed at the end; --keep keeps it)'}\n"
          f"store    {store.split('@')[-1]}", flush=True)
    pns(store, "migrate")  # only serve and migrate create a store
    customer = account(store, f"bench-customer-{tag}", "customer")
    switch = account(store, f"bench-switch-{tag}", "switch")
    pns(store, "numbers", "add", "--account", customer["accessKey"], *xs)

    api_port = free_port(socket.SOCK_STREAM)
    pns_log = work / "pns.log"
    with open(pns_log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "pns.cli", "serve", "--host", HOST, "--port", str(api_port),
             "--store", store, "--workers", str(args.pns_workers), "--log-level", "warning"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    kam: Kamailio | None = None
    try:
        base = f"http://{HOST}:{api_port}"
        for _ in range(200):
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        else:
            raise HarnessError(f"pns did not start:\n{tail(pns_log)}")

        client = PnsClient(base, customer["accessKey"], customer["accessSecret"])
        rows: list[tuple[str, str]] = []
        party_prefix = rnd.randrange(1000, 10000)
        for i in range(args.bindings):
            a, b = f"8525{party_prefix}{i:03d}"[:11], f"8526{party_prefix}{i:03d}"[:11]
            env = client.call("bindAXB", {"phoneA": a, "phoneB": b, "expireSecond": 7200})
            if env["code"] != 0:
                raise HarnessError(f"bindAXB: {env}")
            x = str(env["data"]["did"])
            rows += [(a, x), (b, x)]
        rnd.shuffle(rows)

        gateway = free_port()
        settings = {
            "PNS_URL": f"{base}/api/pns/",
            "PNS_ACCESS_KEY": switch["accessKey"],
            "PNS_ACCESS_SECRET": switch["accessSecret"],
            "SIP_GATEWAY": f"sip:{HOST}:{gateway}",
            "SIP_TRUSTED": HOST,
            "PNS_TIMEOUT": "2",
            "LOG_LEVEL": "1",
        }
        if args.children:
            settings["SIP_CHILDREN"] = str(args.children)
        if args.workers:
            settings["PNS_WORKERS"] = str(args.workers)
        before_cfg: Path | None = None
        if args.compare_with:
            before_cfg = work / "before.cfg"
            rev_cfg = f"{args.compare_with}:deploy/kamailio/kamailio.cfg"
            before_cfg.write_bytes(subprocess.run(["git", "-C", str(REPO), "show", rev_cfg],
                                                  check=True, capture_output=True).stdout)

        print(f"{args.bindings} bindings, {len(xs)} X numbers, hold {args.hold_ms} ms, "
              f"{args.duration:g} s per rate, {os.cpu_count()} cores, load average "
              f"{os.getloadavg()[0]:.1f}\n", flush=True)
        print(f"{'config':>8} {'rate/s':>7} {'calls':>6} {'failed':>6} {'p50 ms':>7} "
              f"{'p95 ms':>7} {'max ms':>7} {'kam cpu ms/call':>15} {'pns cpu ms/call':>15} "
              f"{'sipp cpu ms/call':>16}", flush=True)
        best: Step | None = None
        steps: list[Step] = []
        n = 0
        for rate in [int(r) for r in args.rates.split(",") if r.strip()]:
            runs: list[tuple[str, Path | None, str]] = []
            if before_cfg is not None:
                runs.append((args.compare_with[:8], before_cfg, args.before_args))
            runs.append(("current", None, args.kamailio_args))
            step = None
            before_step = None
            for label, config, kam_args in runs:
                n += 1
                kam = start_kamailio(work / f"kamailio-{n}", settings, args.shm_mb, kam_args,
                                     config)
                try:
                    step = run_step(work, kam, gateway, server.pid, rows, rate, args.duration,
                                    args.hold_ms, not args.no_latency)
                finally:
                    kam.stop()
                    kam = None
                print(f"{label:>8} {step.rate:>7} {step.calls:>6} {step.failed:>6} "
                      f"{step.p50_ms:>7.2f} {step.p95_ms:>7.2f} {step.max_ms:>7.1f} "
                      f"{step.kam_cpu_ms:>15.2f} {step.pns_cpu_ms:>15.2f} "
                      f"{step.sipp_cpu_ms:>16.2f}", flush=True)
                if config is not None:
                    before_step = step
                time.sleep(2)  # let transactions and dialogs of the step end
            assert step is not None
            if before_step is not None:
                print(f"{'ratio':>8} {'':>7} {'':>6} {'':>6} {'':>7} {'':>7} {'':>7} "
                      f"{step.kam_cpu_ms / before_step.kam_cpu_ms:>14.2f}x "
                      f"{step.pns_cpu_ms / before_step.pns_cpu_ms:>14.2f}x", flush=True)
            steps.append(step)
            if step.failed == 0 and step.ok == step.calls:
                best = step
            elif not args.keep_going:
                break
        print()
        if best:
            print(f"highest rate with no failed call: {best.rate} calls/s "
                  f"(added latency p50 {best.p50_ms:.2f} ms, p95 {best.p95_ms:.2f} ms)")
        else:
            print("no rate passed without failed calls")
        return 0
    finally:
        if kam is not None:
            kam.stop()
        stop_process(server)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
