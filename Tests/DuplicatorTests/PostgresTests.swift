import Foundation
import Glibc
import Testing
@testable import Duplicator

/// PostgreSQL behind the proxy, with a PostgreSQL mirror: libpq's defaults
/// (`sslmode=prefer`) open every session with an SSLRequest that main answers
/// with "N" before the client sends its startup message. The mirror must get
/// the two in separate turns (`--mirror-turns`), or it refuses the session and
/// misses its writes. Two clusters on free loopback ports, trust
/// authentication, in a temporary folder removed at the end. Skipped when
/// PostgreSQL is missing (`.ci/run` installs it).
@Suite("Real peers: PostgreSQL through the proxy", .serialized, .timeLimit(.minutes(6)))
struct PostgresTests {
    /// The server binaries of the newest PostgreSQL installed, if any.
    static let binDirectory: String? = {
        let root = "/usr/lib/postgresql"
        let names = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
        let versions = names.compactMap { Int($0) }.sorted()
        guard let newest = versions.last else { return nil }
        let bin = "\(root)/\(newest)/bin"
        return access("\(bin)/initdb", X_OK) == 0 ? bin : nil
    }()

    /// One cluster: initdb, then the server as our child, stopped (fast shutdown) when this goes away.
    final class Cluster {
        let directory: String
        let port: UInt16
        /// The log's length once the server accepted a query: what came
        /// before is its startup (and the readiness probe's refusals).
        private var readyLogBytes = 0
        let bin: String
        let server = Process()

        init(bin: String, parent: String, name: String) throws {
            self.bin = bin
            directory = "\(parent)/\(name)"
            port = freePort()
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            try Self.giveToServerUser(directory)
            let initdb = try Self.asServerUser("\(bin)/initdb", ["-D", "\(directory)/data", "-A", "trust", "-U", "postgres",
                                                                  "--no-sync", "-E", "UTF8", "--locale", "C"],
                                               timeoutSeconds: 60)
            guard initdb.status == 0 else { throw TestFailure("initdb \(name): \(initdb.standardError)") }
            // The server runs in the foreground as our child (as the server
            // user, which setpriv becomes before exec), its output in a file.
            let log = FileManager.default.createFile(atPath: "\(directory)/log", contents: nil)
                ? FileHandle(forWritingAtPath: "\(directory)/log") : nil
            server.executableURL = URL(fileURLWithPath: geteuid() == 0 ? "/usr/bin/setpriv" : "\(bin)/postgres")
            var arguments = ["-D", "\(directory)/data", "-p", "\(port)", "-k", directory,
                             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                             "-c", "full_page_writes=off", "-c", "max_connections=50"]
            if geteuid() == 0 {
                arguments = ["--reuid=postgres", "--regid=postgres", "--init-groups", "\(bin)/postgres"] + arguments
            }
            server.arguments = arguments
            server.standardInput = FileHandle.nullDevice
            server.standardOutput = log ?? FileHandle.nullDevice
            server.standardError = log ?? FileHandle.nullDevice
            try server.run()
            guard eventually(timeoutSeconds: 30, { (try? TestConnection(port: port, timeoutSeconds: 1)) != nil }) else {
                throw TestFailure("postgres \(name) did not listen on \(port): \(self.log)")
            }
            // Listening is not accepting: until its startup ends the server
            // refuses sessions ("the database system is starting up"), and a
            // mirror that refused pgbench -i missed the tables for the whole run.
            guard eventually(timeoutSeconds: 30, { (try? self.query("select 1")) == "1" }) else {
                throw TestFailure("postgres \(name) did not accept a query on \(port): \(self.log)")
            }
            readyLogBytes = self.log.utf8.count
        }

        deinit {
            // SIGINT: PostgreSQL's fast shutdown.
            if server.isRunning { kill(server.processIdentifier, SIGINT) }
            if !eventually(timeoutSeconds: 10, { !server.isRunning }) { kill(server.processIdentifier, SIGKILL) }
            server.waitUntilExit()
        }

        var log: String { (try? String(contentsOfFile: "\(directory)/log", encoding: .utf8)) ?? "" }
        /// What the server logged since it was ready.
        var logSinceReady: String { String(decoding: log.utf8.dropFirst(readyLogBytes), as: UTF8.self) }

        /// One query's rows, unaligned, straight to this cluster (not through the proxy).
        func query(_ sql: String) throws -> String {
            let result = try runProgram("\(bin)/psql", ["-X", "-At", "-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres",
                                                        "-d", "postgres", "-c", sql])
            guard result.status == 0 else { throw TestFailure("psql: \(result.standardError)") }
            return result.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines)
        }

        /// PostgreSQL refuses to run as root: the server user runs it.
        static func asServerUser(_ path: String, _ arguments: [String], timeoutSeconds: Double) throws -> ProcessResult {
            guard geteuid() == 0 else { return try runProgram(path, arguments, timeoutSeconds: timeoutSeconds) }
            return try runProgram("/usr/sbin/runuser", ["-u", "postgres", "--", path] + arguments,
                                  timeoutSeconds: timeoutSeconds)
        }

        static func giveToServerUser(_ path: String) throws {
            guard geteuid() == 0 else { return }
            guard let user = getpwnam("postgres") else { throw TestFailure("no postgres user") }
            chmod(path, 0o755)
            chown(path, user.pointee.pw_uid, user.pointee.pw_gid)
        }
    }

    /// What pgbench leaves that must be equal on main and mirror; the
    /// history's `mtime` is the time of insertion and differs.
    static let checks = [
        "select count(*), sum(abalance) from pgbench_accounts",
        "select count(*), sum(bbalance) from pgbench_branches",
        "select count(*), sum(tbalance) from pgbench_tellers",
        "select count(*), sum(delta), sum(aid) from pgbench_history",
    ]

    @Test("pgbench -i and a pgbench run through the proxy with libpq's defaults: the mirror ends with main's data",
          .enabled(if: binDirectory != nil || Peers.underCI, "PostgreSQL is not installed"),
          arguments: Config.Backend.tested)
    func pgbenchShadow(backend: Config.Backend) throws {
        let bin = try #require(Self.binDirectory)
        var template = Array("/tmp/duplicator-pg-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw TestFailure("mkdtemp: errno \(errno)") }
        let parent = String(cString: made)
        defer { try? FileManager.default.removeItem(atPath: parent) }
        try Cluster.giveToServerUser(parent)
        var main: Cluster? = try Cluster(bin: bin, parent: parent, name: "main")
        var mirror: Cluster? = try Cluster(bin: bin, parent: parent, name: "mirror")
        defer {
            main = nil
            mirror = nil
        }
        // docs/operations.md's advice for a mirror database: a turn timeout longer
        // than its slowest answer to a negotiation. A fresh cluster's first
        // backend, beside the whole suite on two cores, once took longer than
        // the default 100 ms, and once (with builds beside it) longer than
        // 2 s; the mirror then refused that session.
        let proxy = try startProxy(backend: backend, main: main!.port, mirrors: [mirror!.port]) {
            $0.mirrorLingerMs = 10_000
            $0.mirrorTurnTimeoutUs = 10_000_000
        }
        defer { proxy.shutdown() }

        // libpq's defaults: sslmode=prefer, so every session opens with an SSLRequest.
        let common = ["-h", "127.0.0.1", "-p", "\(proxy.port)", "-U", "postgres"]
        let initialize = try runProgram("\(bin)/pgbench", ["-i", "-s", "2", "-q"] + common + ["postgres"],
                                        timeoutSeconds: 90)
        #expect(initialize.status == 0, "pgbench -i: \(initialize.standardError)")
        let run = try runProgram("\(bin)/pgbench", ["-c", "4", "-j", "2", "-t", "150", "-n"] + common + ["postgres"],
                                 timeoutSeconds: 90)
        #expect(run.status == 0, "pgbench: \(run.standardError)")
        #expect(run.standardOutput.contains("number of transactions actually processed: 600"), "\(run.standardOutput)")

        // The mirror may still be working through its last transactions.
        #expect(eventually(timeoutSeconds: 30) { proxy.activeSessions == 0 })
        for check in Self.checks {
            let expected = try main!.query(check)
            #expect(eventually(timeoutSeconds: 10) { (try? mirror!.query(check)) == expected },
                    "\(check): main \(expected), mirror \((try? mirror!.query(check)) ?? "?")")
        }
        #expect(try main!.query("select count(*) from pgbench_history") == "600")
        #expect(proxy.mirrorTotal(0) { $0.sessionsCutForLag.value + $0.bytesMissed.value + $0.errors.value } == 0)
        let mirrorLog = mirror!.logSinceReady
        #expect(!mirrorLog.contains("unencrypted data after SSL request"), "\(mirrorLog)")
        #expect(!mirrorLog.contains("FATAL"), "\(mirrorLog)")
    }
}
