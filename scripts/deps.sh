#!/usr/bin/env bash
# The ONE list of Debian packages patronus-router needs to build, test and run its lab; `.ci/run` and
# `scripts/demo` both install from here. `scripts/deps.sh --list` prints the list without installing.
#   libnftnl-dev libmnl-dev  netlink/nftables from Swift (CNetfilter shim links them)
#   libsqlite3-dev           the system SQLite that GRDB links
#   sqlite3                  the user's query tool; a test runs the seed's queries with it
#   nftables iproute2 wireguard-tools   `nft -j`, `ip -j`, `wg`: tests verify what we installed
#   wireguard-go             the userspace WireGuard backend (no kernel module on these machines)
#   iperf3 socat rsync sip-tester ethtool iputils-ping   real traffic and peers for lab, tests and bench
#   curl systemd             a real HTTP client scrapes the metrics endpoint; systemd-analyze verifies the unit
#   python3                  bench/datapath.sh summarizes iperf3 JSON
#   iptables ipset           bench/datapath.sh installs mwan3's ruleset (iptables-nft, Debian's default backend)
#   dpkg-dev binutils lintian  scripts/package: dpkg-shlibdeps for Depends, strip, the package lint
#   chromium fonts-dejavu-core   a root test opens the dashboard in headless Chromium (DOM + screenshot)
#   prometheus               a root test scrapes a lab router with a real Prometheus and runs every Grafana
#                            panel's query with promtool (its own child server; the package's service is never used)
set -euo pipefail
PACKAGES=(libnftnl-dev libmnl-dev libsqlite3-dev sqlite3 nftables iproute2 wireguard-tools wireguard-go
          iperf3 socat rsync sip-tester ethtool iputils-ping curl systemd python3 iptables ipset dpkg-dev binutils lintian
          chromium fonts-dejavu-core prometheus)
if [[ "${1:-}" == "--list" ]]; then
    printf '%s\n' "${PACKAGES[@]}"
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "scripts/deps.sh: run as root (apt-get install)" >&2
    exit 1
fi
# Idempotent and quick: when every package is installed already, nothing is fetched (no apt-get update).
installed=$(dpkg-query -W -f '${Package} ${db:Status-Status}\n' "${PACKAGES[@]}" 2>/dev/null | awk '$2 == "installed" {print $1}' || true)
missing=()
for p in "${PACKAGES[@]}"; do
    grep -qx "$p" <<<"$installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "scripts/deps.sh: all ${#PACKAGES[@]} packages installed"
    exit 0
fi
echo "scripts/deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
