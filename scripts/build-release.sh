#!/usr/bin/env bash
# Builds the optimised lifeguard binary and prints its path.
#
# Runtime exclusivity checks are turned off for every module (Lifeguard's and SwiftNIO's): callgrind shows
# them at about a fifth of the instructions spent per forwarded transaction. Debug builds, which the tests
# use, keep them, so a violation is still caught there.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product lifeguard -Xswiftc -enforce-exclusivity=unchecked >&2
echo "$(swift build -c release -Xswiftc -enforce-exclusivity=unchecked --show-bin-path)/lifeguard"
