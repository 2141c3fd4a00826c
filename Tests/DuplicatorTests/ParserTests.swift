import Glibc
import Testing
import TestSupport
@testable import Duplicator

@Suite("ParserTests")
struct ParserTests {
    // MARK: - Endpoint

    @Test("host:port, :port and [v6]:port parse into host and port", arguments: [
        ("127.0.0.1:8080", "127.0.0.1", 8080),
        ("localhost:1", "localhost", 1),
        ("example.com:65535", "example.com", 65535),
        (":8081", nil, 8081),
        ("[::1]:9000", "::1", 9000),
        ("[fe80::1%eth0]:443", "fe80::1%eth0", 443),
        ("host:0080", "host", 80),
    ] as [(String, String?, Int)])
    func endpointParses(text: String, host: String?, port: Int) throws {
        let endpoint = try Endpoint(parsing: text, role: .connect)
        #expect(endpoint.host == host)
        #expect(Int(endpoint.port) == port)
        #expect(endpoint.text == text)
        #expect(endpoint.description == text)
    }

    @Test("bad addresses are refused with a one-line message naming the address", arguments: [
        ("8080", "expected host:port"),
        ("localhost", "expected host:port"),
        ("", "expected host:port"),
        ("host:", "port must be"),
        (":", "port must be"),
        ("host:0", "port must be"),
        ("host:65536", "port must be"),
        ("host:99999999999999999999", "port must be"),
        ("host:-1", "port must be"),
        ("host:+80", "port must be"),
        ("host:8o", "port must be"),
        ("host:８０", "port must be"),
        ("::1:80", "brackets"),
        ("a:b:80", "brackets"),
        ("[::1:80", "missing ']'"),
        ("[::1]80", "expected ':port'"),
        ("[::1]", "expected ':port'"),
        ("[]:80", "empty IPv6"),
        ("[::1]:", "port must be"),
    ])
    func endpointRefuses(text: String, fragment: String) {
        let error = #expect(throws: ConfigError.self, "'\(text)'") { try Endpoint(parsing: text, role: .connect) }
        guard let error else { return }
        #expect(error.message.contains(fragment), "\(error.message)")
        #expect(error.message.contains("'\(text)'"))
        #expect(!error.message.contains("\n"))
        #expect(error.description == error.message)
    }

    @Test("port 0 is allowed for a listener only")
    func portZero() throws {
        let listener = try Endpoint(parsing: ":0", role: .listen)
        #expect(listener.port == 0 && listener.host == nil)
        #expect(throws: ConfigError.self) { try Endpoint(parsing: ":0", role: .connect) }
        #expect(throws: ConfigError.self) { try Endpoint(parsing: "127.0.0.1:0", role: .connect) }
    }

    @Test("127.0.0.1, localhost and ::1 resolve to the right family and port")
    func resolves() throws {
        let v4 = try Endpoint(parsing: "127.0.0.1:8080", role: .connect).resolve(role: .connect)
        #expect(v4.family == AF_INET)
        #expect(v4.port == 8080)
        #expect(v4.description == "127.0.0.1:8080")

        let local = try Endpoint(parsing: "localhost:4000", role: .connect).resolve(role: .connect)
        #expect(local.family == AF_INET || local.family == AF_INET6)
        #expect(local.port == 4000)

        let v6 = try Endpoint(parsing: "[::1]:9000", role: .connect).resolve(role: .connect)
        #expect(v6.family == AF_INET6)
        #expect(v6.port == 9000)
        #expect(v6.description == "[::1]:9000")
        #expect(v6.length == socklen_t(MemoryLayout<sockaddr_in6>.size))
        v6.withSockaddr { address, length in
            #expect(Int32(address.pointee.sa_family) == AF_INET6)
            #expect(length == v6.length)
        }
    }

    @Test(":port means this host for a peer and every interface for a listener")
    func bareport() throws {
        let endpoint = try Endpoint(parsing: ":7070", role: .listen)
        #expect(try endpoint.resolve(role: .connect).description == "127.0.0.1:7070")
        #expect(try endpoint.resolve(role: .listen).description == "0.0.0.0:7070")
    }

    @Test("an unresolvable host is a ConfigError, not a crash")
    func unresolvable() throws {
        let endpoint = try Endpoint(parsing: "no-such-host.invalid:80", role: .connect)
        let error = #expect(throws: ConfigError.self) { try endpoint.resolve(role: .connect) }
        #expect(error?.message.contains("cannot resolve 'no-such-host.invalid'") == true, "\(String(describing: error))")
        #expect(error?.message.contains("no-such-host.invalid:80") == true)
    }

    // MARK: - DurationParser

    @Test("durations in Go's syntax", arguments: [
        ("500ms", 500), ("2s", 2_000), ("1m30s", 90_000), ("1.5s", 1_500), ("0", 0), ("0s", 0),
        ("1h", 3_600_000), ("1h1m1s1ms", 3_661_001), ("250us", 1), ("250µs", 1), ("10ns", 1),
        ("1500us", 2), ("0.5ms", 1), ("2.25s", 2_250), ("100ms100ms", 200),
    ])
    func durations(text: String, milliseconds: Int) throws {
        #expect(try DurationParser.milliseconds(text) == milliseconds)
    }

    @Test("durations in nanoseconds")
    func nanoseconds() throws {
        #expect(try DurationParser.nanoseconds("250us") == 250_000)
        #expect(try DurationParser.nanoseconds("1.5s") == 1_500_000_000)
        #expect(try DurationParser.nanoseconds("7ns") == 7)
        #expect(try DurationParser.nanoseconds("1m") == 60_000_000_000)
    }

    @Test("bad durations are refused", arguments: [
        "", "5", "ms", "1x", "1.2.3s", "-1s", "1s2", "s1", ".s", "1 s", " 1s", "1S", "1sec", "00", "1e3s",
        "NaN", "inf", "1..s", "1d",
    ])
    func badDurations(text: String) {
        #expect(throws: ConfigError.self, "\(text)") { try DurationParser.milliseconds(text) }
    }

    @Test("a duration too long for 64-bit nanoseconds is refused, not trapped")
    func hugeDuration() {
        #expect(throws: ConfigError.self) { try DurationParser.milliseconds("9999999999h") }
        #expect(throws: ConfigError.self) { try DurationParser.milliseconds(String(repeating: "9", count: 400) + "s") }
    }

    // MARK: - SizeParser

    @Test("sizes with binary multiples", arguments: [
        ("65536", 65_536), ("64k", 65_536), ("64K", 65_536), ("64KiB", 65_536), ("64kb", 65_536),
        ("4M", 4 << 20), ("4MiB", 4 << 20), ("1G", 1 << 30), ("1GiB", 1 << 30), ("0", 0), ("7B", 7),
    ])
    func sizes(text: String, bytes: Int) throws {
        #expect(try SizeParser.bytes(text) == bytes)
    }

    @Test("bad sizes are refused", arguments: [
        "", "k", "12q", "-1", "1.5M", "1 k", "1T", "KiB", "99999999999999999999", "9999999999999G", "0x10",
    ])
    func badSizes(text: String) {
        #expect(throws: ConfigError.self, "\(text)") { try SizeParser.bytes(text) }
    }

    // MARK: - Config

    private func config(mirrors: Int = 1) throws -> Config {
        try Config(listen: Endpoint(parsing: ":0", role: .listen),
                   main: Endpoint(parsing: "127.0.0.1:8081", role: .connect),
                   mirrors: (0..<mirrors).map { try Endpoint(parsing: "127.0.0.1:\(9000 + $0)", role: .connect) })
    }

    /// The defaults a user reads in docs/flags.md and `--help`, with the
    /// setting each one becomes. `CLITests.helpShowsDefaults` checks that the
    /// help shows the same text; this checks that the engine runs with it.
    static let documentedDefaults: [(flag: String, text: String, value: @Sendable (Config) -> Int)] = [
        ("--timeout", "500ms", { $0.mirrorConnectTimeoutMs }),
        ("--main-connect-timeout", "10s", { $0.mainConnectTimeoutMs }),
        ("--backlog", "4MiB", { $0.backlogBytesMax }),
        ("--backlog-chunks", "256", { $0.backlogChunksMax }),
        ("--slot-size", "16KiB", { $0.slotSize }),
        ("--max-memory", "1GiB", { $0.maxMemoryBytes }),
        ("--max-sessions", "16384", { $0.sessionsMax }),
        ("--idle-timeout", "10m", { $0.idleTimeoutMs }),
        ("--mirror-linger", "2s", { $0.mirrorLingerMs }),
        ("--drain-timeout", "5s", { $0.drainTimeoutMs }),
        ("--compare-window", "64KiB", { $0.compareWindowBytes }),
        ("--dump-bytes", "1MiB", { $0.dumpBytes }),
        ("--dump-max-files", "1000", { $0.dumpMaxFiles }),
    ]

    /// The help's defaults are text made from the values: it must read back as them.
    @Test("size and duration text reads back as the value it was made from")
    func textRoundTrips() throws {
        for bytes in [1, 1000, 1024, 16 << 10, 64 << 10, 4 << 20, 3 << 20 + 1, 1 << 30, 5 << 30] {
            #expect(try SizeParser.bytes(SizeParser.text(bytes)) == bytes, "\(SizeParser.text(bytes))")
        }
        for milliseconds in [0, 1, 50, 500, 1_000, 1_500, 2_000, 60_000, 90_000, 600_000, 3_600_000, 7_200_000] {
            #expect(try DurationParser.milliseconds(DurationParser.text(milliseconds: milliseconds)) == milliseconds,
                    "\(DurationParser.text(milliseconds: milliseconds))")
        }
        #expect(try DurationParser.nanoseconds(DurationParser.text(nanoseconds: 50_000)) == 50_000)
        #expect([SizeParser.text(4 << 20), SizeParser.text(16 << 10), DurationParser.text(milliseconds: 600_000),
                 DurationParser.text(milliseconds: 500), DurationParser.text(nanoseconds: 50_000)]
                == ["4MiB", "16KiB", "10m", "500ms", "50us"])
    }

    @Test("the engine's defaults are the documented ones, and become the session limits")
    func documentedDefaults() throws {
        let config = try config(mirrors: 2)
        try config.validate()
        for (flag, text, value) in Self.documentedDefaults {
            let expected = if flag.hasSuffix("timeout") || flag == "--mirror-linger" || flag == "--mirror-batch-delay" {
                try DurationParser.milliseconds(text)
            } else if let count = Int(text) {
                count
            } else {
                try SizeParser.bytes(text)
            }
            #expect(value(config) == expected, "\(flag): the engine's default \(value(config)), documented \(text)")
        }
        #expect(config.zeroCopy == .auto && config.zeroCopyBytesMin == 16 << 10)
        #expect(config.backend == .auto, "--backend: documented auto")
        let limits = config.limits
        #expect(limits.mirrorCount == 2)
        #expect(limits.backlogBytesMax == 4 << 20)
        #expect(limits.backlogChunksMax == 256)
        #expect(limits.mirrorConnectTimeoutMs == 500)
        #expect(limits.mainConnectTimeoutMs == 10_000)
        #expect(limits.mirrorLingerMs == 2_000)
        #expect(limits.idleTimeoutMs == 600_000)
    }

    @Test("Config.validate refuses each bad setting with its flag's name", arguments: [
        "poolSlots=3", "poolSlots=65536", "poolSlots=0", "maxMemoryBytes=1048575", "slotSize=1024", "slotSize=2097152",
        "backlogBytesMax=0", "backlogChunksMax=0", "backlogChunksMax=4097", "sessionsMax=0",
        "sessionsMax=1000001", "threads=0", "threads=257", "mirrorConnectTimeoutMs=-1",
        "mainConnectTimeoutMs=-1", "mirrorConnectTimeoutMs=0", "mirrorConnectTimeoutMs=99", "mirrorLingerMs=-1", "drainTimeoutMs=-5", "mirrors=65",
        "compareWindowBytes=4095", "compareWindowBytes=16777217",
    ])
    func validateRefuses(setting: String) throws {
        let parts = setting.split(separator: "=")
        let name = String(parts[0])
        let value = try #require(Int(parts[1]))
        var config = try config(mirrors: name == "mirrors" ? value : 1)
        switch name {
        case "poolSlots": config.poolSlots = value
        case "maxMemoryBytes": config.maxMemoryBytes = value
        case "slotSize": config.slotSize = value
        case "backlogBytesMax": config.backlogBytesMax = value
        case "backlogChunksMax": config.backlogChunksMax = value
        case "sessionsMax": config.sessionsMax = value
        case "threads": config.threads = value
        case "mirrorConnectTimeoutMs": config.mirrorConnectTimeoutMs = value
        case "mainConnectTimeoutMs": config.mainConnectTimeoutMs = value
        case "mirrorLingerMs": config.mirrorLingerMs = value
        case "drainTimeoutMs": config.drainTimeoutMs = value
        case "compareWindowBytes": config.compareWindowBytes = value
        default: break
        }
        let error = #expect(throws: ConfigError.self, "\(setting)") { try config.validate() }
        guard let error else { return }
        #expect(!error.message.isEmpty && !error.message.contains("\n"))
        if name == "maxMemoryBytes" { #expect(error.message.contains("--max-memory")) }
        if name == "threads" { #expect(error.message.contains("--threads")) }
        if name == "compareWindowBytes" { #expect(error.message.contains("--compare-window")) }
    }

    @Test("Config.validate accepts the edges of each range", arguments: [
        "poolSlots=4", "poolSlots=32768", "slotSize=4096", "slotSize=1048576", "backlogChunksMax=1",
        "backlogChunksMax=4096", "threads=256", "mirrors=64", "mirrors=0", "mirrorConnectTimeoutMs=100",
        "compareWindowBytes=4096", "compareWindowBytes=16777216",
    ])
    func validateAccepts(setting: String) throws {
        let parts = setting.split(separator: "=")
        let value = try #require(Int(parts[1]))
        var config = try config(mirrors: parts[0] == "mirrors" ? value : 1)
        switch parts[0] {
        case "poolSlots": config.poolSlots = value
        case "slotSize": config.slotSize = value
        case "backlogChunksMax": config.backlogChunksMax = value
        case "threads": config.threads = value
        case "mirrorConnectTimeoutMs": config.mirrorConnectTimeoutMs = value
        case "compareWindowBytes": config.compareWindowBytes = value
        default: break
        }
        try config.validate()
    }

    /// The memory model: each worker's pool is its share of --max-memory, at
    /// most 32768 slots (a buffer ring's size); half of it is the mirrors'
    /// share when there are mirrors; each session is admitted with room for
    /// a full read-ahead window each way (4 slots), within --max-sessions.
    @Test("--max-memory sets the pool of each worker and the sessions it admits")
    func memoryModel() throws {
        var config = try config(mirrors: 1)
        #expect(config.maxMemoryBytes == 1 << 30, "default 1GiB")
        #expect(config.idleTimeoutMs == 600_000, "default 10m")
        config.threads = 2
        #expect(config.poolSlotsPerWorker == 32_768)
        #expect(config.mirrorShareSlots == 16_384)
        #expect(config.sessionsPerWorker == 4_096)
        config.mirrors = []
        #expect(config.mirrorShareSlots == 0)
        #expect(config.sessionsPerWorker == 8_192)
        config.threads = 8
        #expect(config.poolSlotsPerWorker == 8_192)
        #expect(config.sessionsPerWorker == 2_048)
        config.maxMemoryBytes = 4 << 20
        config.threads = 1
        #expect(config.poolSlotsPerWorker == 256)
        #expect(config.sessionsPerWorker == 64)
        config.sessionsMax = 10
        #expect(config.sessionsPerWorker == 10)
        config.poolSlots = 1_024
        config.sessionsMax = 16_384
        #expect(config.sessionsPerWorker == 256, "an explicit pool size wins over --max-memory")
        // 256 threads sharing 1GiB get 256 slots each, and admit 32 sessions each with a mirror.
        config = try self.config(mirrors: 1)
        config.threads = 256
        #expect(config.poolSlotsPerWorker == 256)
        #expect(config.sessionsPerWorker == 32)
        try config.validate()
        config.maxMemoryBytes = 1 << 20
        let error = #expect(throws: ConfigError.self) { try config.validate() }
        #expect(error?.message.contains("--max-memory") == true)
    }

    // MARK: - Properties and fuzzing

    @Test("random strings never trap the parsers: each parses or throws ConfigError", arguments: 0..<4)
    func fuzz(shard: Int) {
        var rng = SeededGenerator(seed: UInt64(1_000 + shard))
        let alphabet = Array("0123456789.:[]%abcdefghkmnsuGKMBiµ -+x\u{0}é٣")
        var parsed = 0
        for _ in 0..<3_000 {
            let length = Int.random(in: 0...14, using: &rng)
            let text = String((0..<length).map { _ in alphabet.randomElement(using: &rng)! })
            for role in [Endpoint.Role.listen, .connect] {
                if let endpoint = try? Endpoint(parsing: text, role: role) {
                    parsed += 1
                    #expect(endpoint.port > 0 || role == .listen)
                    #expect(endpoint.text == text)
                }
            }
            if let value = try? DurationParser.nanoseconds(text) {
                parsed += 1
                #expect(value >= 0)
            }
            if let value = try? SizeParser.bytes(text) {
                parsed += 1
                #expect(value >= 0)
            }
        }
        // Random mutations of valid inputs hit the interesting paths too.
        let seeds = ["1m30s", "1.5s", "64KiB", "[::1]:80", ":8080", "h:1", "250us", "4M"]
        for _ in 0..<3_000 {
            var characters = Array(seeds.randomElement(using: &rng)!)
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let position = Int.random(in: 0...characters.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: characters.insert(alphabet.randomElement(using: &rng)!, at: position)
                case 1: if position < characters.count { characters.remove(at: position) }
                default: if position < characters.count { characters[position] = alphabet.randomElement(using: &rng)! }
                }
            }
            let text = String(characters)
            if (try? Endpoint(parsing: text, role: .connect)) != nil { parsed += 1 }
            if (try? DurationParser.milliseconds(text)) != nil { parsed += 1 }
            if (try? SizeParser.bytes(text)) != nil { parsed += 1 }
        }
        #expect(parsed > 100, "the fuzzer also produced valid inputs")
    }

    @Test("round trips: n ms, a m b s, n us, n s, n KiB / MiB")
    func roundTrips() throws {
        var rng = SeededGenerator(seed: 77)
        for _ in 0..<2_000 {
            let n = Int.random(in: 0...1_000_000_000, using: &rng)
            #expect(try DurationParser.milliseconds("\(n)ms") == n)
            #expect(try DurationParser.nanoseconds("\(n)ns") == Int64(n))
            #expect(try DurationParser.milliseconds("\(n)us") == (n + 999) / 1_000)
            let a = Int.random(in: 0...100_000, using: &rng)
            let b = Int.random(in: 0...59, using: &rng)
            #expect(try DurationParser.milliseconds("\(a)m\(b)s") == (a * 60 + b) * 1_000)
            let seconds = Int.random(in: 0...10_000_000, using: &rng)
            #expect(try DurationParser.milliseconds("\(seconds)s") == seconds * 1_000)
            let size = Int.random(in: 0...1 << 30, using: &rng)
            #expect(try SizeParser.bytes("\(size)") == size)
            #expect(try SizeParser.bytes("\(size)k") == size << 10)
            #expect(try SizeParser.bytes("\(size)MiB") == size << 20)
            let port = Int.random(in: 1...65535, using: &rng)
            #expect(try Endpoint(parsing: "h:\(port)", role: .connect).port == UInt16(port))
            #expect(try Endpoint(parsing: "[::1]:\(port)", role: .connect).port == UInt16(port))
        }
    }
}
