#!/usr/bin/env python3
"""Run the Autobahn test suite (the `kosoku` runner) against tether, in one role, and gate on it.

    autobahn.py server --binary target/release/examples/echo_server --expect 301 -x '12.*'
    autobahn.py client --binary target/release/examples/autobahn_client --expect 301 -x '12.*'

server: starts `BINARY 127.0.0.1:PORT` (the server under test) and drives it with
        `kosoku -m fuzzingclient`.
client: starts `kosoku -m fuzzingserver` on 127.0.0.1:PORT and runs
        `BINARY ws://127.0.0.1:PORT AGENT` (the client under test) against it.

Then reads OUT/index.json. A case passes only when both `behavior` and `behaviorClose` are OK
or INFORMATIONAL. Prints every failing case and a summary line, and exits 1 when a case failed,
when the number of cases differs from --expect, or when a process misbehaved (time-out, crash,
no report). Every child process is ended when this script ends.

Python 3 standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PASSING = {"OK", "INFORMATIONAL"}

# Children started by this script, ended on every way out (see `stop_all`).
CHILDREN: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[autobahn] {msg}", file=sys.stderr, flush=True)


def die_with_parent() -> None:
    """In the child before exec: ask Linux to kill it if this script dies (even by SIGKILL)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except Exception:  # not Linux, or no libc: the explicit clean-up still runs
        pass


def start(cmd: list[str], logfile: Path) -> subprocess.Popen:
    log("starting: " + " ".join(cmd))
    out = open(logfile, "ab")
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    finally:
        out.close()
    CHILDREN.append(proc)
    return proc


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Ends one child: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        try:
            proc.terminate()
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        except ProcessLookupError:
            pass


def stop_all() -> None:
    while CHILDREN:
        stop(CHILDREN.pop())


def on_signal(signum: int, _frame: object) -> None:
    log(f"got signal {signum}: stopping")
    stop_all()
    sys.exit(128 + signum)


def free_port(host: str) -> int:
    """A port nobody listens on right now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_port(host: str, port: int, proc: subprocess.Popen, timeout: float) -> None:
    """Waits until `host:port` accepts TCP connections, failing if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:.0f} s")
        time.sleep(0.05)


def wait(proc: subprocess.Popen, timeout: float, what: str) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what} did not finish within {timeout:.0f} s") from None


def case_key(case_id: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.]", case_id))


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def filters(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for case in args.include or []:
        out += ["-i", case]
    for case in args.exclude or []:
        out += ["-x", case]
    return out


def run_server_role(args: argparse.Namespace, out: Path, port: int) -> None:
    addr = f"{args.host}:{port}"
    server = start([args.binary, addr], out / "server-under-test.log")
    wait_for_port(args.host, port, server, args.startup_timeout)
    kosoku = start(
        [args.kosoku, "-m", "fuzzingclient", "-p", str(args.parallelism), "-o", str(out)]
        + filters(args)
        + [addr],
        out / "kosoku.log",
    )
    # kosoku exits non-zero when a case failed; index.json tells which, so the code is ignored.
    wait(kosoku, args.timeout, "kosoku fuzzingclient")
    if server.poll() is not None:
        raise RuntimeError(f"the server under test exited early with {server.returncode}")
    stop(server)


def run_client_role(args: argparse.Namespace, out: Path, port: int) -> None:
    addr = f"{args.host}:{port}"
    kosoku = start(
        [args.kosoku, "-m", "fuzzingserver", "-o", str(out)] + filters(args) + [addr],
        out / "kosoku.log",
    )
    wait_for_port(args.host, port, kosoku, args.startup_timeout)
    started = time.monotonic()
    client = start([args.binary, f"ws://{addr}", args.agent], out / "client-under-test.log")
    code = wait(client, args.timeout, "the client under test")
    if code != 0:
        log(f"the client under test exited with {code}")
    # kosoku writes the reports and exits by itself after /updateReports.
    left = max(30.0, args.timeout - (time.monotonic() - started))
    wait(kosoku, left, "kosoku fuzzingserver (after the client finished)")


def tally(index_path: Path, role: str, expect: int | None) -> int:
    with open(index_path) as f:
        index = json.load(f)
    cases: list[tuple[str, str, dict]] = []
    for agent, by_case in index.items():
        for case_id, result in by_case.items():
            cases.append((agent, case_id, result))
    cases.sort(key=lambda c: (c[0], case_key(c[1])))
    passed = failed = 0
    for agent, case_id, result in cases:
        behavior = result.get("behavior")
        close = result.get("behaviorClose")
        if behavior in PASSING and close in PASSING:
            passed += 1
        else:
            failed += 1
            print(f"FAIL {agent} {case_id}: behavior={behavior} behaviorClose={close}")
    print(f"autobahn {role}: {passed} passed, {failed} failed")
    ok = failed == 0
    if expect is not None and len(cases) != expect:
        print(f"autobahn {role}: expected {expect} cases, the report has {len(cases)}")
        ok = False
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("role", choices=["server", "client"], help="which side of tether is tested")
    p.add_argument("--kosoku", default=".venv-test/bin/kosoku", help="the kosoku executable")
    p.add_argument("--binary", required=True, help="the echo server or Autobahn client to test")
    p.add_argument("--expect", type=int, default=None, help="number of cases the report must hold")
    p.add_argument(
        "-i", "--include", action="append", metavar="CASE", help="kosoku -i (repeatable)"
    )
    p.add_argument(
        "-x", "--exclude", action="append", metavar="CASE", help="kosoku -x (repeatable)"
    )
    p.add_argument("--out", default=None, help="report folder (default: reports/servers|clients)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 (default): pick a free port")
    p.add_argument("--agent", default="tether", help="agent name the client reports as")
    p.add_argument("-p", "--parallelism", type=int, default=2, help="kosoku -p (server role)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds the suite may take")
    p.add_argument("--startup-timeout", type=float, default=30.0, help="seconds to start listening")
    args = p.parse_args()

    for tool in (args.kosoku, args.binary):
        if not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
            print(f"autobahn {args.role}: not an executable: {tool}", file=sys.stderr)
            return 2
    args.kosoku = os.path.abspath(args.kosoku)
    args.binary = os.path.abspath(args.binary)

    out = Path(args.out or ("reports/servers" if args.role == "server" else "reports/clients"))
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / "index.json"
    # A report left by an earlier run must not pass for this one.
    for stale in [index_path, out / "kosoku.log", out / "server-under-test.log",
                  out / "client-under-test.log"]:
        stale.unlink(missing_ok=True)

    port = args.port
    if port == 0:
        port = free_port(args.host)
    elif not port_is_free(args.host, port):
        print(f"autobahn {args.role}: port {port} is in use", file=sys.stderr)
        return 2

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    begun = time.monotonic()
    try:
        if args.role == "server":
            run_server_role(args, out, port)
        else:
            run_client_role(args, out, port)
    except RuntimeError as e:
        print(f"autobahn {args.role}: {e}", file=sys.stderr)
        for name in ("kosoku.log", "server-under-test.log", "client-under-test.log"):
            text = tail(out / name)
            if text:
                print(f"--- last lines of {out / name}:\n{text}", file=sys.stderr)
        return 1
    finally:
        stop_all()
    log(f"{args.role} role ran in {time.monotonic() - begun:.1f} s; reports in {out}/")

    if not index_path.is_file():
        print(f"autobahn {args.role}: kosoku wrote no {index_path}", file=sys.stderr)
        print(tail(out / "kosoku.log"), file=sys.stderr)
        return 1
    return tally(index_path, args.role, args.expect)


if __name__ == "__main__":
    sys.exit(main())
