# The two commands of the README's quick start, and the rest.
.PHONY: demo test check deps build release bench bench-build clean

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# liburing-dev is the only build dependency (Debian 12 ships liburing 2.3).
deps:
	@dpkg -s liburing-dev >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq liburing-dev; }

release: deps
	swift build -c release --product duplicator

# The built-in demo: echo main, echo mirror, the proxy, the client, a summary.
demo: release
	.build/release/duplicator demo

build: deps
	swift build --build-tests

# The test suite: unit tests, sans-IO session tests, integration tests over
# loopback with real io_uring, and the real peers that are installed.
test: build
	swift test --skip-build

# The fast part, to run after every edit: the unit and sans-IO suites (the
# session under simulated IO with injected faults, the parsers, the ring's
# pure parts, the start-up and loop-guard rules), no process, no peer.
CHECK_SUITES := ParserTests|SessionTests|SendQueueTests|FakeChecksTests|StartupChecksTests|LoopGuardTests/|CompletionTagTests|BufferPoolTests|RingErrorTests|RingTimeoutTests|FNV1a64Tests|LoadAddressTests|SamplingParserTests|SamplingSessionTests|ReplyComparisonTests|CompareSessionTests
check: build
	swift test --skip-build --filter '$(CHECK_SUITES)'

# The side-by-side comparison (BENCHMARKS.md); not part of `make test`.
bench: release
	Benchmarks/compare.sh

bench-build: deps
	cd Benchmarks && swift build -c release

clean:
	rm -rf .build Benchmarks/.build
