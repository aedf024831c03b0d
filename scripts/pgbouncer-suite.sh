#!/usr/bin/env bash
# Runs PgBouncer's own test suite against Lifeguard and holds the result to the checked-in list of tests
# still expected to fail (Tests/PgBouncerSuite/expected-failures.txt, one `test id | reason` a line).
#
#   scripts/pgbouncer-suite.sh [PYTEST_ARGS...]     the whole suite (about 6 minutes), or the tests named
#
# Fails when a test that is not on the list fails (a regression), and names the listed tests that passed
# (take them off the list). The suite and its runner are not part of this repository: PGBOUNCER_SUITE
# names the folder that holds run.sh (default: pgbouncer-suite in a `shared` folder next to the checkout);
# when there is none, the script says so and exits 0 unless PGBOUNCER_SUITE_REQUIRED=1.
# Environment: LIFEGUARD_BINARY (default: scripts/build-release.sh), SUITE_THREADS (runs every Lifeguard
# the suite starts with `threads = N`), SUITE_JSON (keep the per-test results there).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
suite=${PGBOUNCER_SUITE:-$repo/../shared/pgbouncer-suite}
expected="$repo/Tests/PgBouncerSuite/expected-failures.txt"
log() { printf '[pgbouncer-suite] %s\n' "$*" >&2; }

if [ ! -x "$suite/run.sh" ]; then
    log "no PgBouncer suite runner at $suite (set PGBOUNCER_SUITE); not run"
    [ "${PGBOUNCER_SUITE_REQUIRED:-0}" = 1 ] && exit 1
    exit 0
fi

binary=${LIFEGUARD_BINARY:-$("$repo/scripts/build-release.sh")}
# The suite runs as the postgres user: the binary goes where that user can run it.
work=$(mktemp -d /tmp/lifeguard-suite.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
cp "$binary" "$work/lifeguard"
under_test="$work/lifeguard"
if [ -n "${SUITE_THREADS:-}" ]; then
    # The suite starts `BINARY [options] FILE.ini` and RELOADs files it rewrites, so the wrapper's ini sets
    # the thread count and includes the suite's file, which every reload reads afresh.
    cat >"$work/lifeguard-threads" <<WRAPPER
#!/bin/sh
ini=""
for arg in "\$@"; do ini=\$arg; done
case "\$ini" in
*.ini)
    wrapper="\$(dirname "\$ini")/threads-\$(basename "\$ini")"
    printf '[pgbouncer]\nthreads = $SUITE_THREADS\n%%include %s\n' "\$ini" >"\$wrapper"
    count=\$#
    left=\$#
    for arg in "\$@"; do
        left=\$((left - 1))
        if [ \$left -gt 0 ]; then set -- "\$@" "\$arg"; fi
    done
    shift \$count
    exec "$work/lifeguard" "\$@" "\$wrapper"
    ;;
esac
exec "$work/lifeguard" "\$@"
WRAPPER
    chmod 755 "$work/lifeguard-threads"
    under_test="$work/lifeguard-threads"
fi

results=${SUITE_JSON:-$work/results.json}
log "running PgBouncer's suite against $binary${SUITE_THREADS:+ with threads = $SUITE_THREADS}"
status=0
# --tls yes: Lifeguard has TLS, so test_ssl.py and the TLS tests of the other files run too.
"$suite/run.sh" --tls yes --json "$results" --log "$work/suite.log" "$under_test" "$@" >"$work/suite.out" 2>&1 ||
    status=$?
tail -n 1 "$work/suite.out"
if [ "$status" -ge 2 ] || [ ! -s "$results" ]; then
    cat "$work/suite.out"
    log "the runner failed (exit $status)"
    exit 1
fi

python3 - "$results" "$expected" <<'PY'
import json, sys
results, expected_path = sys.argv[1], sys.argv[2]
tests = json.load(open(results))["tests"]
expected = {}
for line in open(expected_path):
    line = line.strip()
    if not line or line.startswith("#"):
        continue
    test_id, _, reason = line.partition("|")
    expected[test_id.strip()] = reason.strip()
failed = {t: r for t, r in tests.items() if r["outcome"] not in ("passed", "skipped")}
regressions = sorted(set(failed) - set(expected))
fixed = sorted(t for t in expected if t in tests and tests[t]["outcome"] == "passed")
for test_id in fixed:
    print(f"now passes (take it off the list): {test_id}")
for test_id in regressions:
    message = (failed[test_id].get("message") or "").splitlines()
    print(f"FAILED, not on the list: {test_id}\n    {message[0][:300] if message else ''}")
print(f"{len(failed)} failed, {len(failed) - len(regressions)} of them listed in {expected_path.split('/')[-1]}; "
      f"{len(regressions)} unexpected")
sys.exit(1 if regressions else 0)
PY
