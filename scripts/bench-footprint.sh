#!/usr/bin/env bash
# Footprint benchmark with the issue's numbers: peak RSS of `edgepatch verify` and of
# `edgepatch apply` on a 512 MB bundle (x86_64 static agent; apply installs four 128 MB .debs,
# stored uncompressed around random data with dpkg-deb -Znone, into a scratch Debian root with
# the host's apt-get/dpkg, as tests/apply_apt.rs does), verify time against sha256sum on the same
# file, and start time of `edgepatch status`, warm and with the page cache dropped.
#
#   sudo scripts/bench-footprint.sh            # ~2-3 minutes; needs ~2.5 GB in /tmp
#
# Not part of scripts/test.sh (it takes well over 60 s): the test command runs the same checks on
# a 64 MB bundle through cross/footprint.sh. This is that script with FOOTPRINT_BUNDLE_MB=512,
# x86_64 only, no TLS builds, no qemu runs, and FOOTPRINT_COLD=1 (drops the page cache once,
# which slows anything else running on the machine for a moment). Budgets are enforced the same
# way: exit 1 when the agent's peak RSS during verify or apply passes 16 MB.
set -uo pipefail
cd "$(dirname "$0")/.."
FOOTPRINT_BUNDLE_MB=${FOOTPRINT_BUNDLE_MB:-512} \
    FOOTPRINT_TARGETS=${FOOTPRINT_TARGETS:-x86_64-unknown-linux-musl} \
    FOOTPRINT_TLS=${FOOTPRINT_TLS:-0} \
    FOOTPRINT_QEMU_TESTS=0 \
    FOOTPRINT_COLD=${FOOTPRINT_COLD:-1} \
    exec bash cross/footprint.sh
