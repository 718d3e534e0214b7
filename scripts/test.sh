#!/usr/bin/env bash
# The whole test suite, on a bare machine (Rust toolchain and Python 3 with venv/pip):
#
#   1. a Python venv in .venv-test with the test peers (kosoku, websockets), made if missing;
#   2. the browser test's peer, installed if missing: Chromium (Debian's `chromium`, with
#      apt-get; needs root) and playwright-core (`npm ci` in crates/tether/tests/browser);
#      node itself (>= 20) must be there already;
#   3. redis-server (Debian's, with apt-get) for the many-node tests, installed if missing;
#      each of those tests runs its own instance on a free port and stops it; tinyproxy and
#      microsocks (Debian's) for the proxy tests, the same way;
#   4. cargo test --workspace (the interop tests find Python through TETHER_PYTHON, Redis
#      through TETHER_REDIS_SERVER);
#   5. the Autobahn test suite against the release examples: server role (tether's own server
#      and the axum example) and client role;
#   6. every fuzz target for 30 s (scripts/fuzz.sh; built with stable cargo, no cargo-fuzz);
#   7. a 60 s soak: 10,000 reconnecting clients of a broadcasting server (scripts/soak.sh).
#
# cargo test, each Autobahn role, the fuzz smoke run and the soak are a gate (a failed release build of the examples counts
# as one failed gate instead of the two roles); the last line says how many gates passed and
# failed, and the exit status is non-zero if any failed.
#
# Usage: bash scripts/test.sh (from anywhere; .ci/run runs it).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv-test"
# Test peers, within the major versions the tests are written against.
PEERS=("kosoku>=0.1,<0.2" "websockets>=17,<18")
# The whole Autobahn suite, compression (12.*, 13.*) included.
AUTOBAHN_EXCLUDE=()
AUTOBAHN_EXPECT=517

# Time limits in seconds (the CI run has 90 minutes in all; on 2 cores a cold build takes a
# few minutes and an Autobahn role well under one).
CARGO_TEST_LIMIT=2400
BUILD_LIMIT=900
AUTOBAHN_LIMIT=900
# The fuzz smoke run: seconds per target, and a bound on the whole step (its build included).
FUZZ_SECONDS=30
FUZZ_LIMIT=1200
# The soak gate: its release build of the bench and the 60 s run.
SOAK_LIMIT=900

passed=0
failed=0
failures=()
started=$SECONDS

cleanup() {
    # Ends whatever still runs: the gate in progress when the script is interrupted. (Each
    # long step runs as a background job that the script waits for, so a signal reaches this
    # trap at once instead of after the step; `timeout` passes the signal on to its command.)
    local pids
    pids="$(jobs -p)"
    if [[ -n "$pids" ]]; then
        # shellcheck disable=SC2086
        kill $pids 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM HUP

section() {
    echo
    echo "==> $* ($((SECONDS - started)) s)"
}

run() {
    # run COMMAND...: runs a command as a waited-for background job (see cleanup).
    "$@" &
    wait "$!"
}

gate() {
    # gate NAME COMMAND...: runs one gate and counts it.
    local name="$1"
    shift
    section "$name"
    if run "$@"; then
        passed=$((passed + 1))
        echo "==> $name: ok"
    else
        local rc=$?
        failed=$((failed + 1))
        failures+=("$name")
        echo "==> $name: FAILED (exit $rc)"
    fi
}

# --- 1. the Python venv with the test peers ---------------------------------------------
peers_importable() {
    [[ -x "$VENV/bin/python" && -x "$VENV/bin/kosoku" ]] &&
        "$VENV/bin/python" -c 'import kosoku, websockets' 2>/dev/null
}

setup_venv() {
    if peers_importable; then
        echo "test peers already installed in $VENV"
        return 0
    fi
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        echo "creating $VENV"
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    echo "installing ${PEERS[*]} into $VENV"
    local attempt
    for attempt in 1 2 3; do
        if run "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            "${PEERS[@]}" </dev/null; then
            break
        fi
        echo "pip install failed (attempt $attempt of 3)" >&2
        [[ $attempt -lt 3 ]] && sleep $((attempt * 5))
    done
    peers_importable
}

section "Python test peers"
if ! setup_venv; then
    echo "could not set up $VENV with ${PEERS[*]}" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
"$VENV/bin/python" -c 'import websockets; print("websockets", websockets.__version__)'
export TETHER_PYTHON="$VENV/bin/python"

# --- 2. Chromium and playwright-core for the browser test ---------------------------------
# A failure here is reported but does not stop the run: the browser test then fails (it never
# skips) and says what is missing, and every other test still runs.
CHROMIUM=/usr/bin/chromium
BROWSER_ASSETS="$ROOT/crates/tether/tests/browser"

retry() {
    # retry WHAT COMMAND...: up to 3 attempts, with a pause between them.
    local what="$1" attempt
    shift
    for attempt in 1 2 3; do
        if run "$@" </dev/null; then
            return 0
        fi
        echo "$what failed (attempt $attempt of 3)" >&2
        [[ $attempt -lt 3 ]] && sleep $((attempt * 5))
    done
    return 1
}

APT_UPDATED=0

apt_install() {
    # apt_install PACKAGE...: installs Debian packages (apt-get; root, or sudo without a
    # password), updating the package lists once per run.
    local sudo=()
    if [[ $EUID -ne 0 ]]; then
        sudo=(sudo -n)
    fi
    if [[ $APT_UPDATED -eq 0 ]]; then
        retry "apt-get update" "${sudo[@]+"${sudo[@]}"}" env DEBIAN_FRONTEND=noninteractive \
            apt-get update -q || return 1
        APT_UPDATED=1
    fi
    retry "apt-get install $*" "${sudo[@]+"${sudo[@]}"}" \
        env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

setup_chromium() {
    if [[ -x "$CHROMIUM" ]]; then
        echo "chromium already installed: $CHROMIUM"
        return 0
    fi
    echo "installing chromium (apt-get)"
    apt_install chromium && [[ -x "$CHROMIUM" ]]
}

setup_playwright() {
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        echo "node and npm (node >= 20) are needed for the browser test and were not found" >&2
        return 1
    fi
    echo "node $(node --version), npm $(npm --version)"
    if [[ -f "$BROWSER_ASSETS/node_modules/playwright-core/package.json" ]]; then
        echo "playwright-core already installed in $BROWSER_ASSETS/node_modules"
        return 0
    fi
    echo "installing playwright-core into $BROWSER_ASSETS/node_modules (npm ci)"
    # playwright-core downloads no browser; the variable makes sure of it.
    retry "npm ci" env -C "$BROWSER_ASSETS" PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
        npm ci --no-audit --no-fund --loglevel=error &&
        [[ -f "$BROWSER_ASSETS/node_modules/playwright-core/package.json" ]]
}

section "browser test peer (chromium, playwright-core)"
if ! setup_chromium; then
    echo "could not install chromium: the browser test will fail" >&2
fi
if ! setup_playwright; then
    echo "could not install playwright-core: the browser test will fail" >&2
fi

# --- 3. Redis for the many-node tests -------------------------------------------------------
# Each Redis test starts its own redis-server on a free port on 127.0.0.1 (no persistence)
# and stops it when it is done, so that a test can also kill and restart it; this only makes
# sure the binary is there. Like the browser test, the Redis tests fail (never skip) without it.
REDIS_SERVER=/usr/bin/redis-server

section "Redis (redis-server)"
if [[ -x "$REDIS_SERVER" ]]; then
    echo "redis-server already installed: $("$REDIS_SERVER" --version)"
else
    echo "installing redis-server (apt-get)"
    if ! apt_install redis-server || [[ ! -x "$REDIS_SERVER" ]]; then
        echo "could not install redis-server: the Redis tests will fail" >&2
    fi
fi
export TETHER_REDIS_SERVER="$REDIS_SERVER"

# --- 3b. Proxies for the network-path tests ---------------------------------------------------
# tinyproxy (HTTP CONNECT) and microsocks (SOCKS5), from Debian. Each proxy test starts its own
# in the foreground on a free port and stops it; like Redis, they fail (never skip) without.
TINYPROXY=/usr/bin/tinyproxy
MICROSOCKS=/usr/bin/microsocks

section "Proxies (tinyproxy, microsocks)"
missing_proxies=()
[[ -x "$TINYPROXY" ]] || missing_proxies+=(tinyproxy)
[[ -x "$MICROSOCKS" ]] || missing_proxies+=(microsocks)
if [[ ${#missing_proxies[@]} -eq 0 ]]; then
    echo "already installed: $("$TINYPROXY" -v 2>&1 | head -n1), microsocks"
else
    echo "installing ${missing_proxies[*]} (apt-get)"
    if ! apt_install "${missing_proxies[@]}" || [[ ! -x "$TINYPROXY" || ! -x "$MICROSOCKS" ]]; then
        echo "could not install ${missing_proxies[*]}: the proxy tests will fail" >&2
    fi
fi
# The Debian package starts a system tinyproxy on port 8888; the tests do not use it.
export TETHER_TINYPROXY="$TINYPROXY" TETHER_MICROSOCKS="$MICROSOCKS"

# --- 4. cargo test -------------------------------------------------------------------------
# --no-fail-fast: a failing test binary does not hide the results of the others.
gate "cargo test --workspace" \
    timeout --kill-after=30 "$CARGO_TEST_LIMIT" cargo test --workspace --all-features --no-fail-fast </dev/null

# --- 5. Autobahn, both roles -------------------------------------------------------------
section "cargo build --release -p tether --examples --all-features"
if run timeout --kill-after=30 "$BUILD_LIMIT" \
    cargo build --release -p tether --examples --all-features </dev/null; then
    # `timeout` itself is the job, so that the cleanup's signal reaches it (and through it
    # autobahn.py, which ends kosoku and the binary under test).
    autobahn=(timeout --kill-after=30 $((AUTOBAHN_LIMIT + 60))
        "$VENV/bin/python" scripts/autobahn.py
        --kosoku "$VENV/bin/kosoku" --expect "$AUTOBAHN_EXPECT" "${AUTOBAHN_EXCLUDE[@]+"${AUTOBAHN_EXCLUDE[@]}"}"
        --timeout "$AUTOBAHN_LIMIT")
    gate "autobahn server" "${autobahn[@]}" server \
        --binary target/release/examples/echo_server --out reports/servers
    gate "autobahn server (axum)" "${autobahn[@]}" server \
        --binary target/release/examples/axum_echo --out reports/servers-axum
    gate "autobahn client" "${autobahn[@]}" client \
        --binary target/release/examples/autobahn_client --out reports/clients
else
    echo "==> the release build of the examples failed: Autobahn not run"
    failed=$((failed + 1))
    failures+=("cargo build --release -p tether --examples --all-features (Autobahn not run)")
fi

# --- 6. fuzz smoke ------------------------------------------------------------------------
# Every fuzz target of fuzz/ for FUZZ_SECONDS (a smoke run: it catches a target that no longer
# builds or a crash that is easy to reach; long runs are `bash scripts/fuzz.sh SECONDS`).
gate "fuzz smoke (${FUZZ_SECONDS} s per target)" \
    timeout --kill-after=30 "$FUZZ_LIMIT" bash scripts/fuzz.sh "$FUZZ_SECONDS" </dev/null

# --- 7. soak, 60 s -------------------------------------------------------------------------
# 10,000 reconnecting clients of a broadcasting server for 60 s (scripts/soak.sh; the long
# version is `bash scripts/soak.sh 30`): fails on fd growth, missing broadcasts, a client
# that gave up or a process that died. On a machine whose hard open-file limit is below what
# 10,000 clients need (two sockets each across the two processes, plus some), it runs with as
# many clients as the limit allows, and says so.
soak_clients=10000
hard_nofile=$(ulimit -Hn)
if [[ "$hard_nofile" != unlimited && "$hard_nofile" -lt $((soak_clients + 500)) ]]; then
    soak_clients=$((hard_nofile - 500))
    echo "soak: the hard open-file limit is $hard_nofile: $soak_clients clients instead of 10,000"
fi
gate "soak (60 s, $soak_clients clients)" \
    timeout --kill-after=30 "$SOAK_LIMIT" bash scripts/soak.sh 1 --clients "$soak_clients" </dev/null

# --- summary -------------------------------------------------------------------------------
echo
echo "==> finished in $((SECONDS - started)) s"
for f in "${failures[@]+"${failures[@]}"}"; do
    echo "FAILED: $f"
done
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
