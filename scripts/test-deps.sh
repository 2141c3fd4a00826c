#!/usr/bin/env bash
# Installs what `make test` needs (Debian/Ubuntu, apt): the build's
# liburing-dev, and the real peers and tools the suites use. `make test`
# and CI (.ci/run) both call it, through `make test-deps`; it installs only
# what is missing, so a second run does nothing.
#
#   package            the suites that need it
#   liburing-dev       everything (the proxy's build)
#   libssl-dev         everything (the proxy's build: TLS termination)
#   openssl            TLSStreamTests, TLSIntegrationTests (certificates made at test time, s_client; nginx and curl too)
#   make pkg-config    the build;  python3: the man pages (scripts/manpage.py)
#   nginx libnginx-mod-stream  RealPeerTests, ProxyProtocolPeerTests (nginx's stream module reads PROXY headers)
#   haproxy            RealPeerTests, ProxyProtocolPeerTests
#   redis-server redis-tools   RealPeerTests, CompareRealPeerTests, ReplayIntegrationTests (redis-server, redis-benchmark, redis-cli)
#   postgresql         PostgresTests (main and mirror databases)
#   wrk curl           RealPeerTests (wrk), OperabilityTests and MetricsEndpointTests (curl)
#   iproute2 nftables  LoopGuardTests (a network namespace and NAT rules)
#   tshark             DumpIntegrationTests (reads the pcapng dumps back)
#   tcpdump            ReplayIntegrationTests (a capture of redis-cli sessions on loopback, replayed)
#   nghttp2-client     TLSPeerTests (h2load over TLS with ALPN h2); redis-tools there too (redis-benchmark --tls)
#   python3-seccomp    SeccompTests (a filter that denies io_uring, as containers' profiles do)
set -euo pipefail

if [[ $(id -u) != 0 ]]; then
    exec sudo "$0" "$@"
fi

export DEBIAN_FRONTEND=noninteractive
missing=()
dpkg -s liburing-dev >/dev/null 2>&1 || missing+=(liburing-dev)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] || missing+=(libnginx-mod-stream)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
for pair in redis-server:redis-server redis-benchmark:redis-tools redis-cli:redis-tools nginx:nginx wrk:wrk curl:curl \
            ip:iproute2 nft:nftables haproxy:haproxy make:make python3:python3 pkg-config:pkg-config \
            tshark:tshark tcpdump:tcpdump openssl:openssl h2load:nghttp2-client; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || [[ -x /usr/sbin/${pair%%:*} ]] || missing+=("${pair#*:}")
done
/usr/bin/python3 -c 'import seccomp' >/dev/null 2>&1 || missing+=(python3-seccomp)
((${#missing[@]})) || exit 0

# The tests start their own servers on free ports: keep the packages'
# services (nginx, redis, postgresql, haproxy) from starting, and failing on
# a busy port, during the install.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
echo "test-deps: installing ${missing[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
