#!/usr/bin/env bash
# THE test command of edgepatch. Run from anywhere, as root (or with sudo) on Debian 12:
#
#   sudo scripts/test.sh
#
# 1. scripts/test-deps.sh      apt packages, rust targets and components (idempotent)
# 2. cargo fmt --all -- --check
# 3. cargo clippy --workspace --all-targets -- -D warnings
# 4. cargo build --workspace --bins && cargo test --workspace
#                              unit tests and the end-to-end tests in tests/ (they run the binaries)
# 5. cross/footprint.sh        static musl agents (x86_64, aarch64, armv7), size and RSS budgets,
#                              allowed crates, unit tests and a verify smoke run under qemu
# 6. tests/package.sh          .deb and .rpm (scripts/package.sh), lintian, install and purge in a
#                              debootstrapped bookworm tree (cached in target/images/)
# 7. scripts/vm-test.sh        boots that tree as a VM (qemu TCG, serial console): timer/service
#                              outcomes, USB stick, power cut + recovery unit, 80-column output
# Every step runs even if an earlier one failed; the exit code is non-zero if any failed. The last
# line sums up the cargo test results ("tests: N passed, N failed").
set -uo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
export DEBIAN_FRONTEND=noninteractive
# Real Debian packages for the delta tests (fetched by test-deps.sh).
export EDGEPATCH_CORPUS=${EDGEPATCH_CORPUS:-$PWD/target/corpus-small}
LOG=$(mktemp /tmp/edgepatch-test.XXXXXX)
trap 'rm -f "$LOG"' EXIT

failed=()
step() {
    local name=$1
    shift
    local start=$SECONDS
    printf '\n==> %s: %s\n' "$name" "$*"
    if "$@"; then
        printf '==> %s: ok (%ds)\n' "$name" $((SECONDS - start))
    else
        printf '==> %s: FAILED (%ds)\n' "$name" $((SECONDS - start))
        failed+=("$name")
    fi
}

run_tests() {
    # The end-to-end tests in tests/ run target/debug/edgepatch{,-builder}; `cargo test` alone
    # does not build another package's binaries (a fresh clone would have none), so build first.
    cargo build --workspace --bins || return 1
    cargo test --workspace 2>&1 | tee "$LOG"
    return "${PIPESTATUS[0]}"
}

step deps bash scripts/test-deps.sh
step fmt cargo fmt --all -- --check
step clippy cargo clippy --workspace --all-targets -- -D warnings
step test run_tests
step footprint bash cross/footprint.sh
step package bash tests/package.sh
step vm bash scripts/vm-test.sh

passed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^passed/) s += $i } END { print s + 0 }' "$LOG")
nfailed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^failed/) s += $i } END { print s + 0 }' "$LOG")
echo
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED steps: ${failed[*]}"
else
    echo "all steps passed: deps fmt clippy test footprint package vm"
fi
echo "tests: $passed passed, $nfailed failed"
[ "${#failed[@]}" -eq 0 ]
