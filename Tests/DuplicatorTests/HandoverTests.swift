import Foundation
import Glibc
import Synchronization
import Testing
import Platform
import LoadTools
@testable import Duplicator

/// `--handover-socket`: the real binary hands its listeners to a new one
/// while clients keep coming, on both backends; and what it does when
/// there is nothing (or nothing usable) to take over.
@Suite("Handover", .serialized, .timeLimit(.minutes(5)))
struct HandoverTests {
    /// A `duplicator` child whose stderr goes to a file the test can read
    /// while it runs; killed (and reaped) when this goes away.
    final class DuplicatorProcess {
        let process = Process()
        let logPath: String

        init(_ arguments: [String], logPath: String) throws {
            self.logPath = logPath
            process.executableURL = URL(fileURLWithPath: try builtBinary("duplicator"))
            process.arguments = arguments
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
            process.standardError = FileHandle(forWritingAtPath: logPath) ?? FileHandle.nullDevice
            process.standardOutput = FileHandle.nullDevice
            try process.run()
        }

        deinit {
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }

        var pid: Int32 { process.processIdentifier }
        var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

        /// Started: the proxy logs "listening on" once it accepts (and, after a
        /// handover, once the old process was told to stop).
        func waitUntilServing(timeoutSeconds: Double = 20) throws {
            guard eventually(timeoutSeconds: timeoutSeconds, { log.contains("listening on") || !process.isRunning }),
                  process.isRunning else {
                throw TestFailure("duplicator did not start: \(log.suffix(800))")
            }
        }

        /// The exit status within `timeoutSeconds`, or nil.
        func exitStatus(timeoutSeconds: Double) -> Int32? {
            guard eventually(timeoutSeconds: timeoutSeconds, { !process.isRunning }) else { return nil }
            process.waitUntilExit()
            return process.terminationStatus
        }
    }

    static func temporaryDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "duplicator-handover-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Short connections, one after another, each an echo of a few bytes
    /// through the proxy, until stopped: every failure is kept (a refused or
    /// reset connection, a wrong reply), and the longest time between two
    /// successful ones (the accept gap a handover makes).
    final class ShortConnections: Sendable {
        struct Tally: Sendable {
            var succeeded = 0
            var failures: [String] = []
            var longestGapSeconds = 0.0
        }
        let tally = Mutex(Tally())
        private let stopping = Atomic<Bool>(false)
        private let finished = Atomic<Int>(0)
        private let count: Int

        init(port: UInt16, connections count: Int = 2) throws {
            self.count = count
            for index in 0..<count {
                try detachedThread { [self] in
                    defer { finished.add(1, ordering: .releasing) }
                    var last = monotonicSeconds()
                    var serial = 0
                    while !stopping.load(ordering: .relaxed) {
                        serial += 1
                        let payload = Array("connection \(index)-\(serial)\n".utf8)
                        do {
                            let connection = try TestConnection(port: port, timeoutSeconds: 5)
                            let (received, end) = connection.exchange(payload, timeoutSeconds: 10)
                            guard received == payload, end == .eof else {
                                throw TestFailure("got \(received.count) of \(payload.count) bytes, then \(end)")
                            }
                            let now = monotonicSeconds()
                            tally.withLock {
                                $0.succeeded += 1
                                $0.longestGapSeconds = max($0.longestGapSeconds, now - last)
                            }
                            last = now
                        } catch {
                            tally.withLock { $0.failures.append("\(error)") }
                        }
                    }
                }
            }
        }

        func stop() -> Tally {
            stopping.store(true, ordering: .relaxed)
            _ = eventually(timeoutSeconds: 30) { finished.load(ordering: .acquiring) == count }
            return tally.withLock { $0 }
        }

        var succeeded: Int { tally.withLock { $0.succeeded } }
    }

    func metricsAnswer(_ port: UInt16) -> Bool {
        guard let connection = try? TestConnection(port: port, timeoutSeconds: 2) else { return false }
        let (received, _) = connection.exchange(Array("GET /metrics HTTP/1.0\r\n\r\n".utf8), timeoutSeconds: 5)
        return String(decoding: received, as: UTF8.self).contains("duplicator_build_info")
    }

    /// Three handovers under two loads: the project's test client on
    /// long-lived connections, and short connections one after another.
    /// No client sees an error, no connection is refused, the old processes
    /// finish their live sessions before exiting 0, and the metrics port
    /// moves with the listeners (the new process could not bind it otherwise).
    @Test("three handovers under load: no client error, no refused connection, old processes drain and exit 0",
          arguments: Config.Backend.tested)
    func handoversUnderLoad(backend: Config.Backend) throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let main = try startServer(.echo)
        defer { main.stop() }
        let mirror = try startServer(.echo)
        defer { mirror.stop() }
        let port = freePort()
        let metricsPort = freePort()
        let socketPath = directory + "/handover.sock"
        // Each process another thread count: fewer and more workers than
        // listeners received both leave no accept queue without an accept.
        let threadCounts = [2, 3, 1, 2]
        func start(_ generation: Int) throws -> DuplicatorProcess {
            try DuplicatorProcess(["-l", "127.0.0.1:\(port)", "-f", "127.0.0.1:\(main.boundPort)", "-m", "127.0.0.1:\(mirror.boundPort)",
                                   "--backend", backend.rawValue, "--threads", "\(threadCounts[generation])",
                                   "--metrics", "127.0.0.1:\(metricsPort)", "--handover-socket", socketPath,
                                   "--drain-timeout", "60s"],
                                  logPath: directory + "/duplicator-\(generation).log")
        }
        var processes = [try start(0)]
        try processes[0].waitUntilServing()
        #expect(processes[0].log.contains("no process holds"), "\(processes[0].log)")
        var status = stat()
        #expect(stat(socketPath, &status) == 0 && status.st_mode & 0o777 == 0o600, "the socket file is mode 0600")

        // Long-lived connections: each of the test client's connections stays
        // on the process that accepted it until the client ends.
        let clientSeconds = 12.0
        let clientResult = Mutex<Result<ProcessResult, any Error>?>(nil)
        let clientThread = try spawnThread {
            let result = Result {
                try runProgram(try builtBinary("duplicator-testclient"),
                               ["-a", "127.0.0.1:\(port)", "-p", "8", "-s", "512", "-d", "\(clientSeconds)", "--json"],
                               timeoutSeconds: clientSeconds + 30)
            }
            clientResult.withLock { $0 = result }
        }
        let short = try ShortConnections(port: port)
        let startedAt = monotonicSeconds()
        #expect(eventually(timeoutSeconds: 10) { short.succeeded > 20 })

        for generation in 1...3 {
            usleep(1_000_000)
            let before = short.succeeded
            let next = try start(generation)
            try next.waitUntilServing()
            // Listeners are never closed (their queues would be lost): a
            // process with fewer workers keeps all it received.
            let listeners = threadCounts[..<generation].max()!
            #expect(next.log.contains("took over \(listeners) listeners and the metrics listener"), "\(next.log)")
            // The first process holds the long-lived client's connections and
            // drains them: it is there until the client ends (the others hold
            // short connections only, and may be gone as soon as they drained).
            // Read in this order, a process gone with the client still running fails.
            #expect(processes[0].process.isRunning || clientResult.withLock({ $0 != nil }),
                    "the first process drains the long-lived client's connections, it is not gone yet")
            #expect(eventually(timeoutSeconds: 10) { processes.last!.log.contains("accepts on the listeners now") })
            #expect(eventually(timeoutSeconds: 10) { short.succeeded > before + 20 }, "clients keep coming in")
            #expect(metricsAnswer(metricsPort))
            processes.append(next)
        }
        let tally = short.stop()
        clientThread.join()
        let clientEndedAt = monotonicSeconds()
        // The test client ran its whole time on connections the first process accepted.
        let result = try #require(try clientResult.withLock { $0 }?.get())
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput.contains("\"errors\":0"), "\(result.standardOutput)")
        #expect(clientEndedAt - startedAt >= clientSeconds - 1)
        #expect(tally.failures.isEmpty, "\(tally.failures.prefix(5))")
        #expect(tally.succeeded > 100)
        print("handover (\(backend.rawValue)): \(tally.succeeded) short connections, longest gap between two \(String(format: "%.1f", tally.longestGapSeconds * 1000)) ms")
        // Every old process drained its sessions and exited 0, after the client ended.
        for old in processes.dropLast() {
            #expect(old.exitStatus(timeoutSeconds: 30) == 0, "\(old.log.suffix(600))")
            #expect(!old.log.contains("closing every session"), "\(old.log.suffix(600))")
        }
        // The newest serves, metrics included, with every old process gone.
        #expect(metricsAnswer(metricsPort))
        let connection = try TestConnection(port: port)
        #expect(connection.exchange(Array("after\n".utf8)).received == Array("after\n".utf8))
        #expect(processes.last!.process.isRunning)
        kill(processes.last!.pid, SIGTERM)
        #expect(processes.last!.exitStatus(timeoutSeconds: 20) == 0)
        #expect(!FileManager.default.fileExists(atPath: socketPath), "the last holder removes its socket file")
    }

    /// The listeners' flags are shared between the processes: the epoll
    /// backend makes them non-blocking, which io_uring's accept must take.
    @Test("handovers between the backends, io_uring to epoll and back, under short connections: no failure")
    func acrossBackends() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let main = try startServer(.echo)
        defer { main.stop() }
        let port = freePort()
        let backends: [Config.Backend] = [.ioUring, .epoll, .ioUring]
        var processes: [DuplicatorProcess] = []
        var short: ShortConnections?
        for (generation, backend) in backends.enumerated() {
            let process = try DuplicatorProcess(["-l", "127.0.0.1:\(port)", "-f", "127.0.0.1:\(main.boundPort)", "--backend",
                                                 backend.rawValue, "--threads", "2", "--handover-socket", directory + "/h.sock"],
                                                logPath: directory + "/duplicator-\(generation).log")
            try process.waitUntilServing()
            #expect(generation == 0 || process.log.contains("took over 2 listeners"), "\(process.log)")
            processes.append(process)
            if short == nil { short = try ShortConnections(port: port) }
            let before = short!.succeeded
            #expect(eventually(timeoutSeconds: 10) { short!.succeeded > before + 50 })
        }
        let tally = short!.stop()
        #expect(tally.failures.isEmpty, "\(tally.failures.prefix(5))")
        for old in processes.dropLast() {
            #expect(old.exitStatus(timeoutSeconds: 20) == 0, "\(old.log.suffix(600))")
        }
    }

    /// A live session of the old process is cut at its drain timeout, not
    /// before, and not by the handover itself.
    @Test("a session of the old process lives on after the handover until it ends", arguments: Config.Backend.tested)
    func liveSessionSurvives(backend: Config.Backend) throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let main = try startServer(.echo)
        defer { main.stop() }
        let port = freePort()
        let socketPath = directory + "/handover.sock"
        func start(_ name: String) throws -> DuplicatorProcess {
            try DuplicatorProcess(["-l", "127.0.0.1:\(port)", "-f", "127.0.0.1:\(main.boundPort)", "--backend", backend.rawValue,
                                   "--threads", "1", "--handover-socket", socketPath, "--drain-timeout", "30s"],
                                  logPath: directory + "/\(name).log")
        }
        let old = try start("old")
        try old.waitUntilServing()
        let session = try TestConnection(port: port)
        let first = session.exchange(Array("before\n".utf8), shutdownAfterSending: false, timeoutSeconds: 5, expectBytes: 7)
        #expect(first.received == Array("before\n".utf8))
        let new = try start("new")
        try new.waitUntilServing()
        usleep(1_500_000)
        #expect(old.process.isRunning, "the old process waits for its live session")
        // The session still works, on the old process.
        let second = session.exchange(Array("after the handover\n".utf8), timeoutSeconds: 10)
        #expect(second.received == Array("after the handover\n".utf8) && second.end == .eof)
        #expect(old.exitStatus(timeoutSeconds: 15) == 0, "\(old.log.suffix(600))")
        #expect(new.process.isRunning)
    }

    @Test("no process at the path, a stale socket file, or another listen address: one line, then it binds normally")
    func fallbacks() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let main = try startServer(.echo)
        defer { main.stop() }
        func start(_ port: UInt16, _ path: String, _ name: String) throws -> DuplicatorProcess {
            let process = try DuplicatorProcess(["-l", "127.0.0.1:\(port)", "-f", "127.0.0.1:\(main.boundPort)", "--threads", "1",
                                                 "--handover-socket", path], logPath: directory + "/\(name).log")
            try process.waitUntilServing()
            return process
        }
        func echoes(_ port: UInt16) -> Bool {
            guard let connection = try? TestConnection(port: port) else { return false }
            return connection.exchange(Array("x\n".utf8), timeoutSeconds: 5).received == Array("x\n".utf8)
        }

        // No process: nothing at the path.
        let firstPort = freePort()
        let alone = try start(firstPort, directory + "/none.sock", "none")
        #expect(alone.log.contains("handover: no process holds \(directory)/none.sock (no such file): binding normally"))
        #expect(echoes(firstPort))

        // A stale socket file: bound by a process that is gone (as one killed with SIGKILL leaves it).
        let stalePath = directory + "/stale.sock"
        let staleSocket = try Handover.unixSocket()
        #expect(Handover.withAddress(stalePath) { bind(staleSocket, $0, $1) } == 0)
        close(staleSocket)
        let stalePort = freePort()
        let afterStale = try start(stalePort, stalePath, "stale")
        #expect(afterStale.log.contains("handover: \(stalePath) is stale (no process listens on it): binding normally"),
                "\(afterStale.log)")
        #expect(echoes(stalePort))

        // Another listen address: the live process keeps its listeners and serves on.
        let otherPort = freePort()
        let other = try start(otherPort, directory + "/none.sock", "other")
        #expect(other.log.contains("is on 127.0.0.1:\(firstPort), not on -l (127.0.0.1:\(otherPort)); binding normally"),
                "\(other.log)")
        #expect(echoes(otherPort) && echoes(firstPort))
        #expect(alone.process.isRunning && !alone.log.contains("accepts on the listeners now"))
    }

    /// A Unix listener at `path` that answers each connection with `reply`
    /// (nothing: never accepts) once the request came; stopped when this goes.
    final class FakeHolder {
        final class Flag: Sendable { let stopping = Atomic<Bool>(false) }
        let fd: Int32
        private let flag = Flag()

        init(path: String, reply: String?) throws {
            let fd = try Handover.unixSocket()
            self.fd = fd
            guard Handover.withAddress(path, { bind(fd, $0, $1) }) == 0, listen(fd, 4) == 0 else {
                throw TestFailure("cannot listen on \(path): errno \(errno)")
            }
            guard let reply else { return }
            let flag = flag
            try detachedThread {
                while !flag.stopping.load(ordering: .relaxed) {
                    var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                    guard poll(&entry, 1, 50) > 0 else { continue }
                    let connection = accept(fd, nil, nil)
                    guard connection >= 0 else { continue }
                    var buffer = [UInt8](repeating: 0, count: 512)
                    _ = recv(connection, &buffer, buffer.count, 0)
                    _ = send(connection, reply, reply.utf8.count, Int32(MSG_NOSIGNAL))
                    usleep(200_000)
                    close(connection)
                }
            }
        }

        deinit {
            flag.stopping.store(true, ordering: .relaxed)
            usleep(100_000)
            close(fd)
        }
    }

    @Test("a holder that breaks the protocol, or does not answer: one line, then it binds normally", arguments: [
        ("duplicator-handover 2 offer listeners=1 metrics=0 pid=1\n", "handover protocol version 2; this build speaks version 1"),
        ("duplicator-handover 1 offer listeners=2 metrics=0 pid=1\n", "the offer announced 2 descriptors and 0 came"),
        ("HTTP/1.1 400 Bad Request\r\n\r\n", "not printable ASCII"),
        ("duplicator-handover 1 refused this process is stopping\n", "refused: this process is stopping"),
        (nil, "no answer within 5000 ms"),
    ] as [(String?, String)])
    func brokenHolder(reply: String?, expected: String) throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let main = try startServer(.echo)
        defer { main.stop() }
        let path = directory + "/handover.sock"
        let holder = try FakeHolder(path: path, reply: reply)
        let port = freePort()
        let process = try DuplicatorProcess(["-l", "127.0.0.1:\(port)", "-f", "127.0.0.1:\(main.boundPort)", "--threads", "1",
                                             "--handover-socket", path], logPath: directory + "/duplicator.log")
        try process.waitUntilServing()
        let lines = process.log.split(separator: "\n").filter { $0.contains("handover") }
        #expect(lines.count == 1 && lines[0].contains(expected) && lines[0].hasSuffix("; binding normally"), "\(process.log)")
        let connection = try TestConnection(port: port)
        #expect(connection.exchange(Array("x\n".utf8), timeoutSeconds: 5).received == Array("x\n".utf8))
        withExtendedLifetime(holder) {}
    }

    /// SO_PEERCRED: listeners are never taken from a process of another
    /// user. The holder here is python as nobody (root may connect to its
    /// socket whatever the mode); the new process refuses it and binds.
    @Test("a holder of another uid is refused: one line, then it binds normally",
          .enabled(if: geteuid() == 0 && FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv")
                   && FileManager.default.isExecutableFile(atPath: "/usr/bin/python3"), "needs root, setpriv and /usr/bin/python3"))
    func holderOfAnotherUser() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        chmod(directory, 0o777)
        let main = try startServer(.echo)
        defer { main.stop() }
        let path = directory + "/handover.sock"
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        holder.arguments = ["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", """
            import socket, time
            s = socket.socket(socket.AF_UNIX); s.bind("\(path)"); s.listen(4)
            while True:
                c, _ = s.accept(); c.recv(512); c.sendall(b"duplicator-handover 1 offer listeners=1 metrics=0 pid=1\\n"); time.sleep(1); c.close()
            """]
        let holderLog = directory + "/holder.log"
        _ = FileManager.default.createFile(atPath: holderLog, contents: nil)
        holder.standardError = FileHandle(forWritingAtPath: holderLog)
        try holder.run()
        defer {
            holder.terminate()
            holder.waitUntilExit()
        }
        #expect(eventually(timeoutSeconds: 10) { FileManager.default.fileExists(atPath: path) },
                "\((try? String(contentsOfFile: holderLog, encoding: .utf8)) ?? "")")
        let port = freePort()
        let process = try DuplicatorProcess(["-l", "127.0.0.1:\(port)", "-f", "127.0.0.1:\(main.boundPort)", "--threads", "1",
                                             "--handover-socket", path], logPath: directory + "/duplicator.log")
        try process.waitUntilServing()
        let lines = process.log.split(separator: "\n").filter { $0.contains("handover") }
        #expect(lines.count == 1 && lines[0].contains("runs as uid 65534, not as this process's uid 0; binding normally"),
                "\(process.log)")
    }

    @Test("a path too long for a Unix socket, or in a folder that does not exist: one line and a non-zero exit")
    func badPath() throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        for (path, expected) in [(String(repeating: "p", count: 120), "longer than"),
                                 ("/nonexistent-folder-\(getpid())/handover.sock", "cannot bind")] {
            let result = try runProgram(try builtBinary("duplicator"),
                                        ["-l", "127.0.0.1:\(freePort())", "-f", "127.0.0.1:\(main.boundPort)", "--handover-socket", path])
            #expect(result.status != 0)
            let lines = result.standardError.split(separator: "\n")
            #expect(lines.count == 1 && lines[0].contains(expected), "\(result.standardError)")
        }
    }

    /// Received listeners are each worker's own accept queue: with fewer
    /// workers than listeners, some accept on several; with more, the others
    /// join the group. Clients queued on every listener before the proxy
    /// starts are all served (none waits on a queue no one accepts from).
    @Test("clients queued on every listener handed over are served, whatever the thread count",
          arguments: Config.Backend.tested, [1, 3, 6])
    func queuedClientsServed(backend: Config.Backend, threads: Int) throws {
        let main = try startServer(.echo)
        defer { main.stop() }
        let port = freePort()
        let address = SocketAddress(numericHost: "127.0.0.1", port: port)!
        let listeners = try (0..<4).map { _ in try Sockets.listen(on: address, queueLength: 128, reusePort: true) }
        // 40 clients spread over the 4 queues by the kernel's hash (all four
        // get some but once in tens of thousands of runs), not yet accepted.
        let clients = try (0..<40).map { _ in try TestConnection(port: port) }
        var config = Config(listen: try Endpoint(parsing: "127.0.0.1:\(port)", role: .listen), main: endpoint(main.boundPort),
                            mirrors: [])
        config.backend = backend
        config.threads = threads
        let proxy = try Proxy(config: config, inheritedListeners: listeners)
        try proxy.start()
        defer { proxy.shutdown() }
        for (index, client) in clients.enumerated() {
            let payload = Array("queued \(index)\n".utf8)
            let (received, end) = client.exchange(payload, timeoutSeconds: 10)
            #expect(received == payload && end == .eof, "client \(index)")
        }
        #expect(try echoSessions(20, port: port) { Array("session \($0)\n".utf8) }.isEmpty)
    }

    /// wrk's requests and what it counted as errors, from its report.
    static func wrkSummary(_ output: String) -> (requests: Int, errors: String?) {
        let lines = output.split(separator: "\n")
        let requests = lines.first { $0.contains("requests in") }
            .flatMap { Int($0.trimmingCharacters(in: .whitespaces).split(separator: " ")[0]) } ?? 0
        let errors = lines.first { $0.contains("Socket errors") || $0.contains("Non-2xx") }.map(String.init)
        return (requests, errors)
    }

    /// wrk on 8 keep-alive connections and wrk with a connection per request
    /// (4 at once), both to `port` for `seconds`, on threads of their own.
    final class WrkPair: @unchecked Sendable {
        private let outputs = Mutex<[Result<ProcessResult, any Error>]>([])
        private var threads: [NativeThread] = []

        init(port: UInt16, seconds: Int) throws {
            let wrk = try Peers.require("wrk")
            // wrk's own timeout (2 s) is a slow reply, not an error: on a loaded machine give it 10 s.
            let runs = [["-t1", "-c8", "-d\(seconds)s", "--timeout", "10s"],
                        ["-t1", "-c4", "-d\(seconds)s", "--timeout", "10s", "-H", "Connection: close"]]
            threads = try runs.map { arguments in
                try spawnThread { [self] in
                    let result = Result { try runProgram(wrk, arguments + ["http://127.0.0.1:\(port)/"], timeoutSeconds: Double(seconds) + 50) }
                    outputs.withLock { $0.append(result) }
                }
            }
        }

        /// Waits for both; expects each to end well with more than 100
        /// requests and no socket error or non-2xx reply. The requests of both.
        func requestsWithoutError() throws -> Int {
            threads.forEach { $0.join() }
            var total = 0
            for output in outputs.withLock({ $0 }) {
                let result = try output.get()
                #expect(result.status == 0, "wrk: \(result.standardError)")
                let (requests, errors) = HandoverTests.wrkSummary(result.standardOutput)
                #expect(errors == nil, "\(result.standardOutput)")
                #expect(requests > 100, "\(result.standardOutput)")
                total += requests
            }
            return total
        }
    }

    /// The issue's run, in one: nginx main and two nginx mirrors, wrk on
    /// keep-alive connections and wrk with a connection per request; 20
    /// reloads that add, remove and resample the mirrors, then, with both
    /// mirrors configured, 3 handovers to new processes started with the same
    /// file. No client error and no refused connection in either phase; the
    /// old processes exit 0; and over the handovers each mirror logged exactly
    /// the requests main did (every session began with both configured).
    @Test("20 reloads, then 3 handovers, under wrk against nginx main and two nginx mirrors: no error, no refused connection",
          .enabled(if: Peers.runnable("nginx", "wrk") || ProcessInfo.processInfo.environment["CI"] == "true", "needs nginx and wrk"),
          arguments: Config.Backend.tested)
    func reloadsThenHandovers(backend: Config.Backend) throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        for name in ["main", "a", "b"] {
            try FileManager.default.createDirectory(atPath: directory + "/" + name, withIntermediateDirectories: true)
        }
        let peers = RealPeerTests()
        let main = try peers.nginx(directory + "/main")
        let a = try peers.nginx(directory + "/a")
        let b = try peers.nginx(directory + "/b")
        func logged() -> [Int] {
            [main, a, b].map { ((try? String(contentsOfFile: $0.directory + "/access.log", encoding: .utf8)) ?? "").split(separator: "\n").count }
        }
        let sets: [[String]] = [["A"], ["A", "B"], ["B"], ["A@10%", "B"], [], ["A", "B@50%"], ["B@1%"], ["A", "B"]]
        func yaml(_ set: [String]) -> String {
            let mirrors = set.map { $0.replacingOccurrences(of: "A", with: "127.0.0.1:\(a.port)")
                .replacingOccurrences(of: "B", with: "127.0.0.1:\(b.port)") }
            // Slow mirrors on a loaded machine flush late, not never.
            return "forward: 127.0.0.1:\(main.port)\ntimeout: 5s\nmirror-linger: 10s\n"
                + "mirror: [\(mirrors.map { "\"\($0)\"" }.joined(separator: ", "))]\n"
        }
        // Reload r reads set (r + 3) % 8: the 20th leaves both mirrors at 100%.
        let configPath = directory + "/duplicator.yaml"
        try yaml(sets[3]).write(toFile: configPath, atomically: true, encoding: .utf8)
        let port = freePort()
        func start(_ generation: Int) throws -> DuplicatorProcess {
            let process = try DuplicatorProcess(["-l", "127.0.0.1:\(port)", "--config", configPath, "--backend", backend.rawValue,
                                                 "--threads", "2", "--handover-socket", directory + "/handover.sock",
                                                 "--drain-timeout", "60s"],
                                                logPath: directory + "/duplicator-\(generation).log")
            try process.waitUntilServing()
            return process
        }
        var processes = [try start(0)]

        // Phase 1: 20 reloads under load.
        let loaded = try WrkPair(port: port, seconds: 9)
        usleep(500_000)
        for reload in 1...20 {
            try yaml(sets[(reload + 3) % sets.count]).write(toFile: configPath, atomically: true, encoding: .utf8)
            kill(processes[0].pid, SIGHUP)
            #expect(eventually(timeoutSeconds: 10) {
                processes[0].log.split(separator: "\n").filter { $0.contains("SIGHUP: reloaded") }.count == reload
            }, "reload \(reload): \(processes[0].log.split(separator: "\n").filter { $0.contains("SIGHUP") }.suffix(2))")
            usleep(350_000)
        }
        _ = try loaded.requestsWithoutError()
        // Every copy of phase 1 flushed: the mirrors' logs stand still.
        var previous = logged()
        #expect(eventually(timeoutSeconds: 20) {
            usleep(1_000_000)
            defer { previous = logged() }
            return logged() == previous
        })

        // Phase 2: 3 handovers under load, both mirrors configured throughout.
        let before = logged()
        let handedOver = try WrkPair(port: port, seconds: 10)
        for generation in 1...3 {
            usleep(2_000_000)
            processes.append(try start(generation))
            #expect(processes[generation].log.contains("took over 2 listeners"), "\(processes[generation].log)")
        }
        let total = try handedOver.requestsWithoutError()
        for old in processes.dropLast() {
            #expect(old.exitStatus(timeoutSeconds: 30) == 0, "\(old.log.suffix(600))")
        }
        #expect(logged()[0] - before[0] >= total)
        #expect(eventually(timeoutSeconds: 15) {
            let now = logged()
            return now[1] - before[1] == now[0] - before[0] && now[2] - before[2] == now[0] - before[0]
        }, "requests logged since the handovers began, main, a, b: \(zip(logged(), before).map { $0 - $1 })")
        kill(processes.last!.pid, SIGTERM)
        #expect(processes.last!.exitStatus(timeoutSeconds: 20) == 0)
    }
}
