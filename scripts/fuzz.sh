#!/usr/bin/env bash
# Builds the libFuzzer harness (Sources/LifeguardFuzz, declared in Package.swift only when LIFEGUARD_FUZZ is
# set) into .build-fuzz and runs each target for N seconds (default 60) on a temporary copy of its seed
# corpus in Tests/FuzzCorpus/<target>. Prints executions and crashes per target and exits non-zero on any
# crash, printing the saved crashing input. `scripts/fuzz.sh 5` is a quick smoke run.
#   LIFEGUARD_FUZZ_TARGETS="scram session"  only these targets
#   LIFEGUARD_FUZZ_CONFIG=debug             build configuration (default release: more executions per second)
#   LIFEGUARD_FUZZ_ARTIFACTS=dir            where crashing inputs are kept (default .build-fuzz/artifacts)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
config=${LIFEGUARD_FUZZ_CONFIG:-release}
artifacts=${LIFEGUARD_FUZZ_ARTIFACTS:-.build-fuzz/artifacts}
read -r -a targets <<<"${LIFEGUARD_FUZZ_TARGETS:-frame-scanner startup-packet message-splitter extended-query configuration userlist admin-command scram session}"

# ASan symbolizes stack traces with llvm-symbolizer; Swift toolchains usually ship one.
if ! command -v llvm-symbolizer >/dev/null && ! [ -x "$(dirname "$(command -v swift)")/llvm-symbolizer" ]; then
    echo "== installing llvm (for llvm-symbolizer)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq llvm >/dev/null
fi
command -v llvm-symbolizer >/dev/null || export PATH="$PATH:$(dirname "$(command -v swift)")"

echo "== building the fuzz harness ($config)"
build_start=$SECONDS
# A local manifest cache keeps this manifest variant (with the fuzz target) out of the shared one.
LIFEGUARD_FUZZ=1 swift build --manifest-cache local --scratch-path .build-fuzz -c "$config" -j 2 \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library --product lifeguard-fuzz 2>&1 |
    grep -vE "Cannot export local symbol" | tail -n 3
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1
echo "build took $((SECONDS - build_start)) s"
binary=.build-fuzz/$config/lifeguard-fuzz

work=$(mktemp -d "${TMPDIR:-/tmp}/lifeguard-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$artifacts"

max_len() {
    case $1 in
        startup-packet) echo 10100 ;;  # StartupPacket.maxLength plus the two control bytes
        admin-command) echo 512 ;;
        scram) echo 2048 ;;
        *) echo 4096 ;;
    esac
}

# Swift's own crash handler reads foreign stacks, which ASan reports as a bug of its own: let libFuzzer and
# ASan print the stack instead.
export SWIFT_BACKTRACE=enable=no
failed=0
printf '%-18s %12s %8s %s\n' target executions exec/s crashes
for target in "${targets[@]}"; do
    corpus="$work/$target"
    mkdir -p "$corpus"
    cp Tests/FuzzCorpus/"$target"/* "$corpus"/
    log="$work/$target.log"
    status=0
    LIFEGUARD_FUZZ_TARGET=$target "$binary" -max_total_time="$seconds" -rss_limit_mb=2048 \
        -max_len="$(max_len "$target")" -timeout=25 -use_value_profile=1 -print_final_stats=1 \
        -artifact_prefix="$artifacts/$target-" "$corpus" >"$log" 2>&1 || status=$?
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    crash=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    if [ "$status" -ne 0 ] || [ -n "$crash" ]; then
        failed=1
        printf '%-18s %12s %8s %s\n' "$target" "${executions:-?}" "${rate:-?}" "1: ${crash:-exit status $status}"
        grep -E "invariant violated|Fatal error|ERROR: (libFuzzer|AddressSanitizer)|SUMMARY" "$log" | head -n 5
        grep -E "^ *#[0-9]+ " "$log" | head -n 12
        [ -n "$crash" ] && echo "input (hex): $(od -An -tx1 -v "$crash" | tr -d ' \n' | cut -c1-400)"
        cp "$log" "$artifacts/$target.log"
        echo "full log: $artifacts/$target.log"
    else
        printf '%-18s %12s %8s %s\n' "$target" "${executions:-?}" "${rate:-?}" 0
    fi
done
exit "$failed"
