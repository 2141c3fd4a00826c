import Glibc
import Platform
import Testing
import TestSupport
@testable import Duplicator

// `--config FILE` and SIGHUP: the file reader, the diff of what a reload
// applies and what it refuses, the mirror slots, and the generations as a
// session sees them (sans-IO). The binary's side is in ReloadIntegrationTests.

@Suite("Config file: reading")
struct ConfigFileTests {
    @Test("keys are the long flags without dashes; scalars, lists and flags become the flags' texts")
    func reads() throws {
        let file = try ConfigFile.parse("""
            listen: 127.0.0.1:8080
            forward: :8081
            mirror: [":8082", ":8083@10%"]
            timeout: 2s
            backlog: 16MiB
            compare: true
            accept-proxy: false
            backlog-chunks: 64
            """, path: "test.yaml")
        #expect(file.entries.map(\.key) == ["listen", "forward", "mirror", "timeout", "backlog", "compare", "accept-proxy",
                                            "backlog-chunks"])
        #expect(file.entries[0].values == ["127.0.0.1:8080"])
        #expect(file.entries[1].values == [":8081"], "a value starting with a colon is a plain scalar")
        #expect(file.entries[2].values == [":8082", ":8083@10%"])
        #expect(file.entries[5].isOn && !file.entries[6].isOn)
        #expect(file.entries[7].values == ["64"])
        #expect(try ConfigFile.parse("mirror: :8082", path: "x").entries[0].values == [":8082"], "one mirror needs no list")
        #expect(try ConfigFile.parse("", path: "x").entries.isEmpty)
        #expect(try ConfigFile.parse("# only a comment\n", path: "x").entries.isEmpty)
    }

    @Test("every mistake is one line naming the key (or the line) and the reason", arguments: [
        ("listen: :1\nbogus: 3\n", "key 'bogus': unknown key"),
        ("--listen: :1\n", "key '--listen': unknown key (write it without the dashes)"),
        ("timeout: [1s, 2s]\n", "key 'timeout': expected one value, not a list or a mapping"),
        ("mirror: {a: 1}\n", "key 'mirror': expected a list of addresses"),
        ("mirror: [[\":1\"]]\n", "key 'mirror': each item must be one address"),
        ("compare: maybe\n", "key 'compare': expected true or false, got 'maybe'"),
        ("timeout:\n", "key 'timeout': has no value"),
        ("timeout: 1s\ntimeout: 2s\n", "duplicated key(s): 'timeout'"),
        ("listen: [\n", "not YAML"),
        ("- :8080\n", "expected a mapping of option names to values"),
    ])
    func refuses(text: String, expected: String) {
        do {
            _ = try ConfigFile.parse(text, path: "bad.yaml")
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.message.contains(expected), "\(error.message)")
            #expect(error.message.hasPrefix("config file bad.yaml"), "\(error.message)")
            #expect(!error.message.contains("\n"), "\(error.message)")
        }
    }

    @Test("a file that cannot be read is one line")
    func unreadable() {
        #expect(throws: ConfigError("config file /nonexistent/x.yaml: No such file or directory (ENOENT)")) {
            _ = try ConfigFile.read(path: "/nonexistent/x.yaml")
        }
    }
}

@Suite("Config reload: what applies and what needs a new process")
struct ConfigDiffTests {
    static func config(mirrors: [UInt16] = [2]) -> Config {
        Config(listen: try! Endpoint(parsing: "127.0.0.1:1", role: .listen), main: endpoint(9), mirrors: mirrors.map(endpoint))
    }

    @Test("the mirror set, sampling, timeouts, backlog and batching apply to new sessions")
    func applies() {
        let old = Self.config()
        var new = Self.config(mirrors: [2, 3])
        new.mirrorSamplePercents = [100, 10]
        new.mirrorConnectTimeoutMs = 100
        new.idleTimeoutMs = 1000
        new.mirrorBatchBytes = 0
        new.backlogBytesMax = 1 << 20
        let diff = ConfigDiff(from: old, to: new)
        #expect(diff.refused.isEmpty)
        #expect(Set(diff.applied) == ["mirror", "mirror sampling", "timeout", "idle-timeout", "mirror-batch-bytes", "backlog"])
        #expect(ConfigDiff(from: old, to: old).isEmpty)
    }

    @Test("--compare applies to new sessions (ConfigReloads refuses it where the start reserved no windows)")
    func compare() {
        var new = Self.config()
        new.compare = true
        let diff = ConfigDiff(from: Self.config(), to: new)
        #expect(diff.applied == ["compare"] && diff.refused.isEmpty, "\(diff)")
    }

    @Test("the dump directory, the bytes per dump and the dump writer's bounds apply from the reload on")
    func dumpBounds() {
        var new = Self.config()
        new.dumpMaxFiles = 7
        new.dumpQueueBytes = 2 << 20
        let diff = ConfigDiff(from: Self.config(), to: new)
        #expect(diff.applied == ["dump-max-files", "dump-queue"] && diff.refused.isEmpty, "\(diff)")
        new.dumpBytes = 1 << 10
        new.dumpDirectory = "/tmp"
        let both = ConfigDiff(from: Self.config(), to: new)
        #expect(both.applied == ["dump-dir", "dump-bytes", "dump-max-files", "dump-queue"] && both.refused.isEmpty, "\(both)")
    }

    @Test("what was bound or sized at start is refused, by name")
    func refuses() {
        let changes: [(String, (inout Config) -> Void)] = [
            ("listen", { $0.listen = try! Endpoint(parsing: "127.0.0.1:5", role: .listen) }),
            ("forward", { $0.main = endpoint(8) }),
            ("threads", { $0.threads = 3 }),
            ("max-memory", { $0.maxMemoryBytes = 2 << 30 }),
            ("backend", { $0.backend = .epoll }),
            ("compare-window", { $0.compareWindowBytes = 1 << 20 }),
            ("mirror-slots", { $0.mirrorSlots = 8 }),
        ]
        for (name, change) in changes {
            var new = Self.config(mirrors: [3])
            change(&new)
            let diff = ConfigDiff(from: Self.config(), to: new)
            #expect(diff.refused.contains { $0.hasPrefix(name) }, "\(name): \(diff.refused)")
            #expect(diff.applied == ["mirror"])
        }
    }
}

@Suite("Config reload: mirror slots and generations")
struct MirrorSlotsTests {
    static func address(_ port: UInt16) -> SocketAddress { try! endpoint(port).resolve(role: .connect) }

    @Test("a mirror keeps its slot by address across reloads; a new address takes a slot never used")
    func slots() throws {
        var table = MirrorSlots(count: 3)
        #expect(try table.assign([("a", Self.address(2))]).get() == [0])
        #expect(try table.assign([("b", Self.address(3)), ("a", Self.address(2))]).get() == [1, 0])
        #expect(try table.assign([("b", Self.address(3))]).get() == [1], "a removed")
        #expect(try table.assign([("a", Self.address(2)), ("c", Self.address(4))]).get() == [0, 2], "a back in its slot")
        guard case .failure(let taken) = table.assign([("d", Self.address(5))]) else {
            Issue.record("a fourth address found a slot of three")
            return
        }
        #expect(taken.name == "d" && taken.count == 3)
        #expect(table.names == ["a", "b", "c"], "a failed assignment changes nothing")
    }

    @Test("a generation's limits: slots it does not use are absent, sampling per slot")
    func limits() throws {
        var config = ConfigDiffTests.config(mirrors: [3, 4])
        config.mirrorSamplePercents = [50, 100]
        let generation = ConfigGeneration(number: 2, config: config, mirrorSlots: [2, 0], slotNames: ["c", "", "a"],
                                          slotAddresses: [nil, nil, nil])
        #expect(generation.limits.mirrorCount == 3)
        #expect(generation.limits.mirrorSlotsAbsent == 0b010)
        #expect(generation.limits.mirrorSampleThresholds == [MirrorSampling.everySession, MirrorSampling.everySession,
                                                            MirrorSampling.threshold(percent: 50)])
        let unchanged = ConfigGeneration(number: 1, config: ConfigDiffTests.config(), mirrorSlots: [0], slotNames: ["a"],
                                         slotAddresses: [nil])
        #expect(unchanged.limits.mirrorSlotsAbsent == 0 && unchanged.limits.mirrorSampleThresholds.isEmpty,
                "without reloads the sessions see what they saw before")
    }
}

@Suite("Config reload: a live session keeps its configuration (simulated IO)")
struct ReloadSessionTests {
    @Test("a session started before a reload keeps its mirror; one started after gets the new set")
    func generations() throws {
        // Storage for two mirror slots; generation 1 uses slot 0 only.
        let io = try FakeSessionIO(limits: SessionLimits(mirrorCount: 2, mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0),
                                   sessions: 2)
        var first = SessionLimits(mirrorCount: 1, mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
        first.mirrorLingerMs = 2_000
        io.context.adopt(first)
        try #require(io.start() != nil)
        let old = try #require(io.lastKey)
        #expect(io.requests(.connect, .mirror(0), old).count == 1)
        #expect(io.requests(.connect, .mirror(1), old).isEmpty)
        io.connectAll(old)

        // The reload: slot 0 removed, slot 1 added, another linger.
        var second = SessionLimits(mirrorCount: 2, mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
        second.mirrorSlotsAbsent = 0b01
        second.mirrorLingerMs = 7_000
        io.context.adopt(second)
        try #require(io.start() != nil)
        let new = try #require(io.lastKey)
        #expect(io.requests(.connect, .mirror(0), new).isEmpty, "a removed mirror gets no new session")
        #expect(io.requests(.connect, .mirror(1), new).count == 1)
        io.connectAll(new)

        // The old session goes on as it started: its bytes reach slot 0, never slot 1.
        let bytes = TestBytes.random(300, seed: 7)
        io.completeRecv(.client, bytes, old)
        io.flushAllSends(old)
        #expect(io.sent(to: .mirror(0), old) == bytes)
        #expect(io.requests(.connect, .mirror(1), old).isEmpty, "a mirror never joins a live session")
        let newBytes = TestBytes.random(200, seed: 8)
        io.completeRecv(.client, newBytes, new)
        io.flushAllSends(new)
        #expect(io.sent(to: .mirror(1), new) == newBytes)
        #expect(io.stats.mirrors[0].sessionsSampledOut.value == 0, "an absent slot is not counted as sampled out")
        #expect(io.stats.mirrors[0].sessionsMirrored.value == 1)
        #expect(io.stats.mirrors[1].sessionsMirrored.value == 1)
        io.abort()
    }

    @Test("a removed mirror's live copies are counted apart as they finish; a configured mirror's are not")
    func retiredCopies() throws {
        let io = try FakeSessionIO(limits: SessionLimits(mirrorCount: 2, mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0),
                                   sessions: 3)
        io.context.adopt(SessionLimits(mirrorCount: 2, mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0))
        try #require(io.start() != nil)
        let old = try #require(io.lastKey)
        io.connectAll(old)
        try #require(io.start() != nil)
        let before = try #require(io.lastKey)
        io.connectAll(before)
        io.abort(before)
        io.completeCancelled()
        #expect(io.stats.mirrors.map { $0.sessionsRetired.value } == [0, 0], "no reload: nothing retired")

        // A reload removes slot 1, the last (the new generation has one slot).
        io.context.adopt(SessionLimits(mirrorCount: 1, mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0))
        try #require(io.start() != nil)
        let after = try #require(io.lastKey)
        io.connectAll(after)
        io.abort(after)
        io.completeCancelled()
        #expect(io.stats.mirrors.map { $0.sessionsRetired.value } == [0, 0], "a session of the new configuration retires nothing")
        io.abort(old)
        io.completeCancelled()
        #expect(io.stats.mirrors.map { $0.sessionsRetired.value } == [0, 1], "the old session's copy to slot 1 finished after its removal")

        // Another removes slot 0 (absent) and brings slot 1 back.
        var third = SessionLimits(mirrorCount: 2, mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0)
        third.mirrorSlotsAbsent = 0b01
        io.context.adopt(SessionLimits(mirrorCount: 2, mirrorBatchBytes: 0, mirrorBatchDelayUs: 0, mirrorTurns: 0))
        try #require(io.start() != nil)
        let both = try #require(io.lastKey)
        io.connectAll(both)
        io.context.adopt(third)
        io.abort(both)
        io.completeCancelled()
        #expect(io.stats.mirrors.map { $0.sessionsRetired.value } == [1, 1])
    }
}
