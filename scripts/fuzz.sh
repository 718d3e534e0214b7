#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/ for SECONDS each and prints, per target, how many inputs ran
# and the coverage libFuzzer reached.
#
#   scripts/fuzz.sh SECONDS [TARGET...]
#
# Targets: frames handshake deflate pair differential (all of them when none is named).
# Needs no cargo-fuzz and no nightly toolchain: the targets are built with plain cargo and
# the sanitizer-coverage flags cargo-fuzz passes (without AddressSanitizer, which needs
# nightly), into fuzz/target. Corpora grow in fuzz/corpus/TARGET and crashing inputs are kept
# in fuzz/artifacts/TARGET/; both stay local (.gitignore). Extra libFuzzer options can be
# given in FUZZ_ARGS, e.g. FUZZ_ARGS="-max_len=16384 -jobs=2".
#
# Exits non-zero if any target crashed (or could not be built), naming the crashing input.
set -euo pipefail

usage() {
    echo "usage: $0 SECONDS [TARGET...]" >&2
    echo "targets: frames handshake deflate pair differential" >&2
    exit 2
}

[[ $# -ge 1 && $1 =~ ^[0-9]+$ && $1 -gt 0 ]] || usage
seconds=$1
shift
all=(frames handshake deflate pair differential)
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${all[@]}")
for t in "${targets[@]}"; do
    [[ " ${all[*]} " == *" $t "* ]] || { echo "unknown target: $t" >&2; usage; }
done

root=$(cd "$(dirname "$0")/.." && pwd)
fuzz="$root/fuzz"
host=$(rustc -vV | sed -n 's/^host: //p')
bin="$fuzz/target/$host/release"

# The flags cargo-fuzz uses on a stable toolchain. `--target` keeps them off build scripts
# and proc macros, which run on the host and are not linked with libFuzzer.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks"
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
echo "building ${targets[*]} (release, sanitizer coverage) for $host"
(cd "$fuzz" && cargo build --release --target "$host" --target-dir "$fuzz/target" "${bins[@]}")

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
declare -A status
crashed=0
for t in "${targets[@]}"; do
    corpus="$fuzz/corpus/$t"
    artifacts="$fuzz/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    dirs=("$corpus")
    args=()
    if [[ $t == handshake ]]; then
        # Real requests and responses and a dictionary of header names get past
        # "400 Bad Request" much sooner.
        dirs+=("$fuzz/seeds/handshake")
        args+=(-dict="$fuzz/handshake.dict")
    fi
    echo "fuzzing $t for ${seconds}s"
    set +e
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
    "$bin/$t" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="$artifacts/" "${args[@]}" ${FUZZ_ARGS:-} "${dirs[@]}" \
        >"$logs/$t.log" 2>&1
    rc=$?
    set -e
    if [[ $rc -eq 0 ]]; then
        status[$t]=ok
    else
        crashed=1
        input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$logs/$t.log" | tail -n 1)
        status[$t]="CRASHED (exit $rc): ${input:-no input saved; see the log below}"
        echo "--- $t: last lines of the log ---"
        tail -n 40 "$logs/$t.log"
        echo "---"
    fi
done

echo
printf '%-13s %12s %8s %8s %8s  %s\n' target execs exec/s cov ft status
for t in "${targets[@]}"; do
    log="$logs/$t.log"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    # The last coverage line: "#N DONE cov: X ft: Y ..." after a full run, or the last
    # progress line before a crash.
    line=$(grep -E '^#[0-9]+[[:space:]].*cov: ' "$log" | tail -n 1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$line")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$line")
    if [[ -z $execs ]]; then
        execs=$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$line")
    fi
    printf '%-13s %12s %8s %8s %8s  %s\n' "$t" "${execs:--}" "${rate:--}" "${cov:--}" \
        "${ft:--}" "${status[$t]}"
done
if [[ $crashed -ne 0 ]]; then
    echo
    echo "reproduce a crash with: fuzz/target/$host/release/TARGET INPUT"
fi
exit "$crashed"
