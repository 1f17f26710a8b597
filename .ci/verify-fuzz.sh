#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for ${FUZZ_SECS:-60} seconds each.
#
# Stable toolchain: `--sanitizer none` is what lets cargo-fuzz build without nightly (no -Zsanitizer
# flag is passed; coverage instrumentation uses stable -C flags). Installs cargo-fuzz if missing.
# Exits non-zero on the first crash, after printing the failing input and the panic message.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECS="${FUZZ_SECS:-60}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "verify-fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
cargo fuzz --version

cd fuzz
log_dir="$(mktemp -d)"
trap 'rm -rf "$log_dir"' EXIT
status=0
for target in $(cargo fuzz list); do
    log="$log_dir/$target.log"
    echo "verify-fuzz: $target for ${FUZZ_SECS}s"
    start=$(date +%s)
    if cargo fuzz run "$target" --sanitizer none -- -max_total_time="$FUZZ_SECS" >"$log" 2>&1; then
        # libFuzzer ends with "Done <runs> runs in <secs> second(s)".
        done_line="$(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1 || true)"
        echo "verify-fuzz: $target ok: ${done_line:-no summary line} (wall $(( $(date +%s) - start ))s)"
    else
        status=1
        echo "verify-fuzz: $target FAILED"
        grep -E "panicked|SUMMARY|Test unit written|^(Failing input|Reproduce with)" -A 2 "$log" | head -n 60 || true
        tail -n 40 "$log"
    fi
done
exit "$status"
