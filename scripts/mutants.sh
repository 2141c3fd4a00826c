#!/usr/bin/env bash
# One-line mutants of the proxy's promises, each applied alone to a scratch
# copy of the working tree and run against the tests that should catch it.
# A mutant that the tests pass "survives": a promise that no test guards.
# Every mutant below must be killed (docs/testing.md).
#
# Usage:
#   scripts/mutants.sh              # every mutant
#   scripts/mutants.sh NAME...      # only these (names as listed by --list)
#   scripts/mutants.sh --list
#
#   SCRATCH   the scratch copy (default .build-mutants/src); its .build is
#             kept between runs, so each mutant rebuilds only what it touches
#   TIMEOUT   seconds one mutant's test run may take (default 900)
#
# Exit status: 0 when every mutant was killed; 1 when one survived or did
# not apply (the code it mutates has changed: update the mutant).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCRATCH=${SCRATCH:-$ROOT/.build-mutants/src}
TIMEOUT=${TIMEOUT:-900}
# Each mutant runs the suites of `make check` (CHECK_SUITES in the
# Makefile) that test its promise (the whole of `make check` takes minutes
# on two busy cores), or EpollWorkerTests for the epoll backend's sends:
# only a real socket tells a short send from a whole one.
EPOLL='EpollWorkerTests'
VERDICTS='ReplyComparisonTests/(verdicts|incomplete|windowBound)|CompareSessionTests'
PROXY_HEADER='ProxyProtocolTests|ProxyHeaderReportingTests|SessionProxyHeaderTests|FuzzRegressionTests'

names=() files=() olds=() news=() filters=()
# mutant NAME FILE OLD NEW FILTER: replace the one occurrence of OLD in FILE by NEW.
mutant() { names+=("$1"); files+=("$2"); olds+=("$3"); news+=("$4"); filters+=("$5"); }

# Promises 1-3, stream order: a queue hands out its last chunk first.
mutant stream-order Sources/Duplicator/Engine/SendQueue.swift \
    'var first: Chunk? { count > 0 ? entry(head).pointee : nil }' \
    'var first: Chunk? { count > 0 ? entry((head &+ count &- 1) % capacity).pointee : nil }' 'SendQueueTests|MirrorBatchTests'
# A short send marks one byte more as sent than the kernel took: a dropped byte.
mutant short-send-drops-a-byte Sources/Duplicator/Engine/Session.swift \
    'var unconsumed = min(length, sendingBytes)' \
    'var unconsumed = min(length &+ (length < sendingBytes ? 1 : 0), sendingBytes)' 'SessionTests/shortSend|MirrorBatchTests'
# Promise 5, half-close: the client's EOF never becomes a shutdown towards main.
mutant half-close-client-to-main Sources/Duplicator/Engine/Session.swift \
    $'legs[.main].shutdownWanted = true\n            kickSend(.main, io: io)\n            for mirror in mirrorLegs {' \
    $'kickSend(.main, io: io)\n            for mirror in mirrorLegs {' 'SessionTests/halfClose'
# ... nor main's EOF one towards the client.
mutant half-close-main-to-client Sources/Duplicator/Engine/Session.swift \
    $'legs[.client].shutdownWanted = true\n            kickSend(.client, io: io)' \
    $'kickSend(.client, io: io)' 'SessionTests/halfClose'
# Promise 7, idle timeout: the worker never runs the idle check.
mutant idle-check-never-runs Sources/Duplicator/Engine/WorkerCore.swift \
    'forEachSession(where: { !$0.isEnding }) { $0.checkIdle(io: io) }' \
    '_ = io  // mutant: no idle check' 'SessionTests/idleTimeout|WorkerCoreTests'
# ... or runs it with twice the timeout.
mutant idle-timeout-doubled Sources/Duplicator/Engine/Session.swift \
    'context.nowMs &- lastActivityMs >= UInt64(timeoutMs)' \
    'context.nowMs &- lastActivityMs >= UInt64(timeoutMs) &* 2' 'SessionTests/idleTimeout|WorkerCoreTests'
# Promise 9, verdicts: a stream that ends behind the other is not called
# shorter or longer. (Swapping shorter and longer in `verdict`'s last line
# survived every order of arrival tried: end() and append() decide first,
# so that line looks unreachable.)
mutant verdict-lagger-end Sources/Duplicator/Compare/ReplyComparison.swift \
    'decide(Self.past(ahead))' \
    'decide(.incomplete)' "$VERDICTS"
# ... a stream past the other's end is called the other way round.
mutant verdict-past-the-end Sources/Duplicator/Compare/ReplyComparison.swift \
    'private static func past(_ stream: Stream) -> Verdict { stream == .mirror ? .longer : .shorter }' \
    'private static func past(_ stream: Stream) -> Verdict { stream == .mirror ? .shorter : .longer }' "$VERDICTS"
# PROXY header bounds: a v1 line one byte longer than 107 is taken.
mutant proxy-v1-bound Sources/Duplicator/Engine/ProxyProtocol.swift \
    'for index in 0..<min(bytes.count, version1BytesMax) {' \
    'for index in 0..<min(bytes.count, version1BytesMax &+ 1) {' "$PROXY_HEADER"
# ... a v2 header one byte longer than its bound is taken.
mutant proxy-v2-bound Sources/Duplicator/Engine/ProxyProtocol.swift \
    'guard length <= headerBytesMax else { return .invalid(.oversized) }' \
    'guard length <= headerBytesMax &+ 1 else { return .invalid(.oversized) }' "$PROXY_HEADER"
# The epoll backend's send reports its whole length when the kernel took less.
mutant epoll-send-claims-all Sources/Duplicator/Backends/Epoll/EpollWorker.swift \
    $'complete(pending.tag, Int32(truncatingIfNeeded: result))\n    }' \
    $'complete(pending.tag, Int32(truncatingIfNeeded: result < 0 ? result : pending.length))\n    }' "$EPOLL"
# The epoll backend's send drops its last byte.
mutant epoll-send-drops-last-byte Sources/Duplicator/Backends/Epoll/EpollWorker.swift \
    'Glibc.send(fd, pending.bytes, pending.length, Int32(MSG_NOSIGNAL))' \
    'Glibc.send(fd, pending.bytes, pending.length > 1 ? pending.length - 1 : pending.length, Int32(MSG_NOSIGNAL))' "$EPOLL"
# Gathered sends: the message leaves out its last chunk.
mutant gathered-send-drops-last-chunk Sources/Duplicator/Backends/Shared/WorkerSockets.swift \
    'message.pointee.msg_iovlen = chunks' \
    'message.pointee.msg_iovlen = chunks > 1 ? chunks - 1 : chunks' 'GatherMessageTests'
# ... or sends its chunks in reverse order.
mutant gathered-send-order Sources/Duplicator/Backends/Shared/WorkerSockets.swift \
    'let chunk = queue.chunk(at: position)' \
    'let chunk = queue.chunk(at: chunks &- 1 &- position)' 'GatherMessageTests'
# ... or two legs share one message.
mutant gathered-send-shared-message Sources/Duplicator/Backends/Shared/WorkerSockets.swift \
    'let leg = Int(tag.session) &* mirrorSlotCount &+ Leg(tag).mirrorIndex' \
    'let leg = Leg(tag).mirrorIndex' 'GatherMessageTests'
# Turn keeping: a mirror gets the next turn's bytes before it answered the last.
mutant turn-not-kept Sources/Duplicator/Engine/TurnGate.swift \
    'if start > sent { return .send(bytesMax: Int(start &- sent)) }' \
    'if start > sent { return .send(bytesMax: Int.max) }' 'MirrorTurnTests|TurnGateTests'
# Fairness admission: a worker admits sessionsMax whatever its pool can serve.
mutant admission-ignores-pool Sources/Duplicator/Config/Config.swift \
    'max(1, min(sessionsMax, (poolSlotsPerWorker - mirrorShareSlots) / Self.sessionSlotsMax))' \
    'max(1, sessionsMax)' 'ParserTests|WorkerCoreTests'
# A mirror batch no traffic sends: the io_uring worker's timer is never armed (the tick sends it).
mutant batch-timer-never-armed Sources/Duplicator/Backends/IOUring/IOUringWorker.swift \
    'if let deadlineUs = parts.timers.nextWakeUs, timerArmedUs == 0 || deadlineUs < timerArmedUs {' \
    'if false, let deadlineUs = parts.timers.nextWakeUs, timerArmedUs == 0 || deadlineUs < timerArmedUs {' \
    'BatchTimerIntegrationTests'
# The same on epoll: its timer descriptor is never armed.
mutant epoll-batch-timer-never-armed Sources/Duplicator/Backends/Epoll/EpollWorker.swift \
    'guard let deadlineUs = parts.timers.nextWakeUs, timerArmedUs == 0 || deadlineUs < timerArmedUs else { return }' \
    'guard false, let deadlineUs = parts.timers.nextWakeUs, timerArmedUs == 0 || deadlineUs < timerArmedUs else { return }' \
    'BatchTimerIntegrationTests'
# The io_uring worker's FINs go through the ring's shutdown again: an io-wq thread each.
mutant fin-through-io-wq Sources/Duplicator/Backends/IOUring/IOUringWorker.swift \
    'if Glibc.shutdown(fd, Int32(SHUT_WR)) == 0 {' \
    'if false, Glibc.shutdown(fd, Int32(SHUT_WR)) == 0 {' \
    'IntegrationTests/finsFromTheWorkersThread'
# Promise 11: handshakes always go to the niced thread (two wakeups each for nothing to protect) ...
mutant handshakes-always-on-the-thread Sources/Duplicator/TLS/TLSSessionIO.swift \
    'let thread = protectsSessions() ? steps : nil' 'let thread = steps' \
    'TLSHandshakeFloodTests/stepsGoToTheThreadToProtectASession'
# ... or never, beside a session that has run for a while.
mutant handshakes-never-on-the-thread Sources/Duplicator/TLS/TLSSessionIO.swift \
    'let thread = protectsSessions() ? steps : nil' 'let thread: HandshakeThread? = nil' \
    'TLSHandshakeFloodTests/stepsGoToTheThreadToProtectASession'

if [[ ${1:-} == --list ]]; then
    printf '%s\n' "${names[@]}"
    exit 0
fi
selected=("$@")
wanted() {
    ((${#selected[@]} == 0)) && return 0
    local name
    for name in "${selected[@]}"; do [[ $name == "$1" ]] && return 0; done
    return 1
}

# The scratch copy: the working tree's files (tracked and new, not ignored),
# copied with their times so that its build stays incremental.
mkdir -p "$SCRATCH"
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -C "$SCRATCH" -xf -
LOG_DIR=$ROOT/.build-mutants/logs
mkdir -p "$LOG_DIR"

# apply FILE OLD NEW: exactly one occurrence, or a non-zero exit.
apply() {
    python3 - "$@" <<'PY'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
if text.count(old) != 1:
    sys.exit(f"{path}: {text.count(old)} occurrences of the mutated text")
open(path, "w").write(text.replace(old, new))
PY
}

# The tests that failed, from swift-testing's output: "Suite/test (File.swift)".
killers() {
    local log=$1 found
    # A parameterized test's line names its arguments before the file.
    found=$(grep -E '✘ Test .* recorded an issue (with .* )?at [A-Za-z]+\.swift' "$log" \
        | sed -E 's/.*✘ Test (.*) recorded an issue (with .* )?at ([A-Za-z]+)\.swift.*/\3 \1/' | sort -u | head -n 3 \
        | awk '{ file = $1; $1 = ""; sub(/^ /, ""); printf "%s%s/%s", sep, file, $0; sep = ", " }')
    if [[ -z $found ]]; then
        # A trap ends the test process: name the last test that started.
        found="a trap in the last test started: $(grep -E '◇ Test .* started' "$log" | tail -n 1 | sed -E 's/.*◇ Test (case .* to )?(.*) started.*/\2/')"
    fi
    echo "$found"
}

echo "== building the unmutated scratch copy ($SCRATCH)"
if ! (cd "$SCRATCH" && swift build --build-tests >"$LOG_DIR/build-original.log" 2>&1); then
    echo "the unmutated copy does not build: $LOG_DIR/build-original.log"
    exit 1
fi

survived=0 failed=0 killed=0
results=()
for index in "${!names[@]}"; do
    name=${names[$index]}
    wanted "$name" || continue
    file=${files[$index]}
    cp -p "$ROOT/$file" "$SCRATCH/$file"
    start=$(date +%s)
    if ! apply "$SCRATCH/$file" "${olds[$index]}" "${news[$index]}" 2>"$LOG_DIR/$name.apply"; then
        results+=("NOT APPLIED  $name: $(cat "$LOG_DIR/$name.apply")")
        failed=1
        continue
    fi
    log=$LOG_DIR/$name.log
    if ! (cd "$SCRATCH" && swift build --build-tests >"$log" 2>&1); then
        results+=("NOT BUILT    $name ($file): see $log")
        failed=1
    elif (cd "$SCRATCH" && timeout -k 30 "$TIMEOUT" swift test --skip-build --filter "${filters[$index]}" >>"$log" 2>&1); then
        results+=("SURVIVED     $name ($file)")
        survived=1
    else
        status=$?
        how=$(killers "$log")
        ((status == 124)) && how="timeout after ${TIMEOUT}s"
        results+=("killed       $name ($file) by $how [$(($(date +%s) - start))s]")
        killed=$((killed + 1))
    fi
    cp -p "$ROOT/$file" "$SCRATCH/$file"
    echo "${results[-1]}"
done

echo "== $killed killed, of ${#results[@]} run (logs in $LOG_DIR)"
printf '%s\n' "${results[@]}"
((survived == 0 && failed == 0))
