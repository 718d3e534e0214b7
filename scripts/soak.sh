#!/usr/bin/env bash
# The soak test: 10,000 reconnecting tether clients of a tether server that broadcasts 10
# messages a second, for MINUTES, with about 1% of the clients dropping and reconnecting
# every 10 s. The server's RSS and open fds and the clients' latency are sampled every 10 s.
#
#   scripts/soak.sh MINUTES [extra bench soak options]
#
# MINUTES may be fractional (1 = 60 s, 0.5 = 30 s). Extra options go to `bench soak`:
# --clients N, --rate R (broadcasts/s), --drops P (% of clients per 10 s), --interval S,
# --allocator system|jemalloc|jemalloc=PATH (the server's allocator; jemalloc is preloaded
# from Debian's libjemalloc2; default: the system's, glibc).
# Builds the bench in release, raises the open-file limit to the hard limit, writes the
# Markdown report to reports/soak-MINUTES.md and prints it.
#
# Exits non-zero if the run failed: fd growth after the warm-up, broadcasts missing while
# connected, a client that gave up, a process that died, or (runs of 10 minutes and more)
# server RSS growth over 5% after the warm-up. See docs/benchmarks.md ("Soak").
set -euo pipefail

usage() {
    echo "usage: $0 MINUTES [--clients N] [--rate R] [--drops P] [--interval S] [--allocator A]" >&2
    exit 2
}

[[ $# -ge 1 && $1 =~ ^[0-9]+([.][0-9]+)?$ ]] || usage
minutes=$1
shift

cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release -p bench --bin bench
bench="${CARGO_TARGET_DIR:-target}/release/bench"

hard=$(ulimit -Hn)
ulimit -n "$hard" 2>/dev/null || echo "soak.sh: could not raise the open-file limit to $hard" >&2
echo "soak.sh: open-file limit $(ulimit -n)" >&2

mkdir -p reports
out="reports/soak-$minutes.md"
status=0
# The report goes to standard output as well as to $out.
"$bench" soak --minutes "$minutes" --out "$out" "$@" || status=$?
if [[ $status -ne 0 ]]; then
    echo "soak.sh: failed (exit $status); report in $out if it was written" >&2
else
    echo "soak.sh: report in $out" >&2
fi
exit "$status"
