# The two commands of the README's quick start, and the rest.
.PHONY: demo test test-deps check deps build release bench bench-build clean dist dist-build install sanitize fuzz mutants

# The version is BuildInfo.version, written once in the source.
VERSION := $(shell sed -n 's/.*static let version = "\(.*\)"/\1/p' Sources/Duplicator/Lifecycle/BuildInfo.swift)
ARCH := $(shell uname -m)
DIST_NAME := duplicator-$(VERSION)-linux-$(ARCH)
PREFIX ?= /usr/local
DESTDIR ?=
# The release binaries of the tarball: the Swift runtime linked in
# (--static-swift-stdlib), and liburing and OpenSSL too: SwiftPM links what
# their pkg-config files say, so a liburing.pc and an openssl.pc of our own
# point -luring, -lssl and -lcrypto at a directory that holds only the
# static archives (libcrypto.a wants -ldl and -pthread). They need nothing beyond
# libc, libm, libstdc++ and libgcc_s (Tests/DuplicatorTests/DistTests.swift).
DIST_SCRATCH := .build-dist
STATIC_LIBS := $(CURDIR)/$(DIST_SCRATCH)/static-libs
STATIC_FLAGS := -c release --scratch-path $(DIST_SCRATCH) --static-swift-stdlib
DIST_BIN := $(DIST_SCRATCH)/release

# Extra flags of the release, test and dist builds: .ci/run sets
# `-Xswiftc -warnings-as-errors` (docs/testing.md).
SWIFT_BUILD_FLAGS ?=

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# liburing-dev and libssl-dev are the build dependencies (Debian 12 ships liburing 2.3, OpenSSL 3.0).
deps:
	@dpkg -s liburing-dev libssl-dev >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq liburing-dev libssl-dev; }

release: deps
	swift build -c release --product duplicator $(SWIFT_BUILD_FLAGS)

# The built-in demo: echo main, echo mirror, the proxy, the client, a summary.
demo: release
	.build/release/duplicator demo

build: deps
	swift build --build-tests $(SWIFT_BUILD_FLAGS)

# What the suite needs beyond the build: the real peers (nginx, haproxy,
# redis, PostgreSQL) and tools (tshark, nftables, python3-seccomp, ...);
# the list and which suite needs what is in scripts/test-deps.sh. CI calls it too.
test-deps:
	scripts/test-deps.sh

# The test suite: unit tests, sans-IO session tests, integration tests over
# loopback with real io_uring, the real peers (installed first by
# test-deps, so that no suite skips for a missing package), and the dist
# tarball (built first, so that its test only finds it current instead of
# building it beside the other tests).
test: test-deps build dist
	swift test --skip-build

# The fast part, to run after every edit: the unit and sans-IO suites (the
# session under simulated IO with injected faults, the parsers, the ring's
# pure parts, the start-up and loop-guard rules), no process, no peer.
CHECK_SUITES := ParserTests|SessionTests|MirrorBatchTests|MirrorTurnTests|TurnGateTests|MirrorBatcherTests|DeadlineQueueTests|ProxyHeaderReaderTests|CompareTapTests|WorkerCoreTests|SessionProxyHeaderTests|ProxyProtocolTests|SendQueueTests|FakeChecksTests|StartupChecksTests|LoopGuardTests/|CompletionTagTests|BufferPoolTests|RingErrorTests|RingTimeoutTests|FNV1a64Tests|LoadAddressTests|SamplingParserTests|SamplingSessionTests|ReplyComparisonTests|CompareSessionTests|DumpTests|ZeroCopySendsTests|DocsTests|ConfigFileTests|ConfigDiffTests|MirrorSlotsTests|ReloadSessionTests|FirstHourUnitTests|FirstHourVerdictTests|HandoverProtocolTests|GatherMessageTests|FuzzRegressionTests|CaptureReaderTests|ReassemblyTests|ReplayEngineTests|BatchWakeTests|TLSStreamTests|HandshakeBudgetTests|HandshakeThreadTests|AcceptGatheringPolicyTests
check: build
	swift test --skip-build --filter '$(CHECK_SUITES)'

# Tests that can fail (docs/testing.md). AddressSanitizer over the sans-IO
# suites, the ring's tests, the epoll backend's and a few integration tests
# on both backends; ThreadSanitizer over several workers starting and
# stopping, the metrics endpoint and the shutdown paths. Each has its own
# scratch path (.build-asan, .build-tsan), reused from run to run.
SANITIZE_ADDRESS := $(CHECK_SUITES)|RingTests|EpollWorkerTests|IntegrationTests/(exactStreams|clientHalfClose|mainHalfClose|mainResets|clientResets)
SANITIZE_THREAD := IntegrationTests/gracefulStopCompletions|OperabilityTests/(metricsWithCurl|backoffSharedByWorkers|mirrorLogSharedByWorkers)|MetricsEndpointTests/(concurrentScrapes|termWithTrickler)
sanitize: deps
	FILTER='$(SANITIZE_ADDRESS)' scripts/sanitizers.sh address
	FILTER='$(SANITIZE_THREAD)' scripts/sanitizers.sh thread

# libFuzzer over the parsers of untrusted input, FUZZ_SECONDS each (Fuzz/).
FUZZ_SECONDS ?= 60
fuzz: deps
	FUZZ_SECONDS=$(FUZZ_SECONDS) scripts/fuzz.sh

# One-line mutants of the promises against the tests that guard them.
mutants: deps
	scripts/mutants.sh

# The side-by-side comparison (BENCHMARKS.md); not part of `make test`.
bench: release
	Benchmarks/compare.sh

bench-build: deps
	cd Benchmarks && swift build -c release

dist-build: deps
	mkdir -p $(STATIC_LIBS)
	ln -sf "$$(pkg-config --variable=libdir liburing)/liburing.a" $(STATIC_LIBS)/liburing.a
	printf 'Name: liburing\nDescription: liburing, linked statically\nVersion: %s\nLibs: -L%s -luring\nCflags:\n' \
		"$$(pkg-config --modversion liburing)" "$(STATIC_LIBS)" > $(STATIC_LIBS)/liburing.pc
	ln -sf "$$(pkg-config --variable=libdir openssl)/libssl.a" $(STATIC_LIBS)/libssl.a
	ln -sf "$$(pkg-config --variable=libdir openssl)/libcrypto.a" $(STATIC_LIBS)/libcrypto.a
	printf 'Name: OpenSSL\nDescription: OpenSSL, linked statically\nVersion: %s\nLibs: -L%s -lssl -lcrypto -ldl -pthread\nCflags:\n' \
		"$$(pkg-config --modversion openssl)" "$(STATIC_LIBS)" > $(STATIC_LIBS)/openssl.pc
	PKG_CONFIG_PATH=$(STATIC_LIBS) swift build $(STATIC_FLAGS) $(SWIFT_BUILD_FLAGS)

# dist/duplicator-VERSION-linux-ARCH.tar.gz: bin/, share/ (man pages and
# bash, zsh and fish completions, generated from the binaries), LICENSE, README.md,
# BENCHMARKS.md, RELIABILITY.md and docs/.
dist: dist-build
	rm -rf dist/$(DIST_NAME)
	scripts/stage.sh $(DIST_BIN) dist/$(DIST_NAME) dist/$(DIST_NAME)
	tar -C dist --sort=name --owner=0 --group=0 --numeric-owner -czf dist/$(DIST_NAME).tar.gz $(DIST_NAME)
	@echo "dist/$(DIST_NAME).tar.gz"

# The same layout under $(DESTDIR)$(PREFIX); the documentation in share/doc/duplicator.
install: dist-build
	scripts/stage.sh $(DIST_BIN) $(DESTDIR)$(PREFIX) $(DESTDIR)$(PREFIX)/share/doc/duplicator

clean:
	rm -rf .build Benchmarks/.build $(DIST_SCRATCH) dist Fuzz/.build
