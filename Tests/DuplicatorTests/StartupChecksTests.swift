import Glibc
import Testing
@testable import Duplicator

/// Promise 8: the operator mistakes refused at start, as pure checks over
/// resolved addresses. Nothing here binds or connects; 10.1.2.3 stands for
/// one of this host's interface addresses.
@Suite("Start-up checks")
struct StartupChecksTests {
    static let interfaceAddress = HostAddress.v4(0x0a01_0203)

    /// (-l, -f, -m..., --metrics, the refusal expected or nil for none)
    static let cases: [(listen: String, main: String, mirrors: [String], metrics: String?, refusal: String?)] = [
        // -f is the listener, also through a wildcard listener and a local address.
        (":8080", ":8080", [], nil, "-f :8080 is this proxy's own listen address (-l :8080)"),
        (":8080", "127.0.0.1:8080", [], nil, "-f 127.0.0.1:8080 is this proxy's own listen address"),
        (":8080", "127.0.0.2:8080", [], nil, "-f 127.0.0.2:8080 is this proxy's own listen address"),
        (":8080", "localhost:8080", [], nil, "-f localhost:8080 is this proxy's own listen address"),
        (":8080", "10.1.2.3:8080", [], nil, "-f 10.1.2.3:8080 is this proxy's own listen address"),
        ("0.0.0.0:8080", "0.0.0.0:8080", [], nil, "-f 0.0.0.0:8080 is this proxy's own listen address"),
        ("[::]:8080", "[::1]:8080", [], nil, "-f [::1]:8080 is this proxy's own listen address"),
        ("[::]:8080", "127.0.0.1:8080", [], nil, "-f 127.0.0.1:8080 is this proxy's own listen address"),
        ("[::]:8080", "[::]:8080", [], nil, "-f [::]:8080 is this proxy's own listen address"),
        ("127.0.0.1:8080", "127.0.0.1:8080", [], nil, "-f 127.0.0.1:8080 is this proxy's own listen address"),
        ("127.0.0.1:8080", ":8080", [], nil, "-f :8080 is this proxy's own listen address"),
        ("127.0.0.1:8080", "[::ffff:127.0.0.1]:8080", [], nil, "own listen address"),
        ("[::1]:8080", "[::1]:8080", [], nil, "own listen address"),
        ("10.1.2.3:8080", "10.1.2.3:8080", [], nil, "own listen address"),
        // Not the listener: another port, another host, a loopback address
        // the listener is not bound to, IPv6 beside an IPv4-only wildcard.
        (":8080", ":8081", [], nil, nil),
        (":8080", "10.9.9.9:8080", [], nil, nil),
        ("127.0.0.1:8080", "127.0.0.2:8080", [], nil, nil),
        ("127.0.0.1:8080", "[::1]:8080", [], nil, nil),
        (":8080", "[::1]:8080", [], nil, nil),
        ("10.1.2.3:8080", "127.0.0.1:8080", [], nil, nil),
        // Port 0: the kernel picks a free port, nothing can name it.
        ("127.0.0.1:0", ":8081", [":8082"], nil, nil),
        // A mirror that is the listener.
        (":8080", ":8081", [":8082", ":8080"], nil, "-m :8080 is this proxy's own listen address (-l :8080)"),
        (":8080", ":8081", ["localhost:8080"], nil, "-m localhost:8080 is this proxy's own listen address"),
        // A mirror that is main.
        (":8080", ":8081", ["localhost:8081"], nil, "-m localhost:8081 is the main server (-f :8081): every client byte would reach main twice"),
        (":8080", "127.0.0.1:8081", [":8082", "0.0.0.0:8081"], nil, "-m 0.0.0.0:8081 is the main server"),
        (":8080", ":8081", ["[::1]:8081"], nil, nil),
        (":8080", ":8081", ["127.0.0.2:8081"], nil, nil),
        // The same mirror twice.
        (":8080", ":8081", [":8082", "127.0.0.1:8082"], nil, "-m 127.0.0.1:8082 is the same mirror as -m :8082"),
        (":8080", ":8081", [":8082", ":8083", ":8082"], nil, "-m :8082 is given twice"),
        (":8080", ":8081", [":8082", "localhost:8082"], nil, "-m localhost:8082 is the same mirror as -m :8082"),
        (":8080", ":8081", [":8082", ":8083", "[::1]:8082"], nil, nil),
        // Metrics on the listen address.
        (":8080", ":8081", [], ":8080", "--metrics :8080 is the listen address (-l :8080)"),
        (":8080", ":8081", [], "127.0.0.1:8080", "--metrics 127.0.0.1:8080 is the listen address"),
        ("127.0.0.1:8080", ":8081", [], ":8080", "--metrics :8080 is the listen address"),
        ("[::]:8080", ":8081", [], "127.0.0.1:8080", "--metrics 127.0.0.1:8080 is the listen address"),
        (":8080", ":8081", [], "[::]:8080", "--metrics [::]:8080 is the listen address"),
        ("127.0.0.1:8080", ":8081", [], "127.0.0.1:8080", "--metrics 127.0.0.1:8080 is the listen address"),
        (":8080", ":8081", [], ":9100", nil),
        ("127.0.0.1:8080", ":8081", [], "127.0.0.2:8080", nil),
        (":8080", ":8081", [], "[::1]:8080", nil),
        ("127.0.0.1:0", ":8081", [], "127.0.0.1:0", nil),
        // Metrics on main's or a mirror's address: the proxy would take the
        // port its target should answer on (as -l there is refused).
        (":8080", ":8081", [], ":8081", "--metrics :8081 is the main server's address (-f :8081)"),
        (":8080", "127.0.0.1:8081", [], "0.0.0.0:8081", "--metrics 0.0.0.0:8081 is the main server's address"),
        (":8080", "10.1.2.3:8081", [], ":8081", "--metrics :8081 is the main server's address"),
        (":8080", "localhost:8081", [], "127.0.0.1:8081", "--metrics 127.0.0.1:8081 is the main server's address"),
        (":8080", ":8081", [":8082", ":8083"], "127.0.0.1:8083", "--metrics 127.0.0.1:8083 is a mirror's address (-m :8083)"),
        (":8080", ":8081", ["localhost:8082"], ":8082", "--metrics :8082 is a mirror's address (-m localhost:8082)"),
        (":8080", "10.9.9.9:8081", [], ":8081", nil),
        (":8080", ":8081", [], "127.0.0.2:8081", nil),
        (":8080", ":8081", [":8082"], ":8083", nil),
    ]

    static func resolved(_ text: String, _ role: Endpoint.Role) throws -> StartupChecks.Resolved {
        let endpoint = try Endpoint(parsing: text, role: role)
        return StartupChecks.Resolved(endpoint: endpoint, addresses: try endpoint.resolveAll(role: role))
    }

    @Test("refused, or not, as the table says", arguments: 0..<cases.count)
    func table(index: Int) throws {
        let row = Self.cases[index]
        let listen = try Endpoint(parsing: row.listen, role: .listen)
        let checks = StartupChecks(
            listen: listen, listenAddress: try listen.resolve(role: .listen),
            main: try Self.resolved(row.main, .connect),
            mirrors: try row.mirrors.map { try Self.resolved($0, .connect) },
            metrics: try row.metrics.map { try Self.resolved($0, .listen) },
            localAddresses: [.v4(0x7f00_0001), .v6(0, 1), Self.interfaceAddress])
        var refusal: String?
        do { try checks.check() } catch { refusal = error.message }
        let description = "-l \(row.listen) -f \(row.main) -m \(row.mirrors) --metrics \(row.metrics ?? "-")"
        if let expected = row.refusal {
            #expect(refusal?.contains(expected) == true, "\(description): \(refusal ?? "accepted")")
            #expect(refusal?.contains("\n") == false)
        } else {
            #expect(refusal == nil, "\(description)")
        }
    }

    @Test("addresses compare without their port, IPv4-mapped as IPv4")
    func hostAddresses() throws {
        func host(_ text: String) throws -> HostAddress {
            HostAddress(try Endpoint(parsing: text, role: .connect).resolve(role: .connect))
        }
        #expect(try host("10.1.2.3:1") == .v4(0x0a01_0203))
        #expect(try host("[::ffff:10.1.2.3]:2") == .v4(0x0a01_0203))
        #expect(try host("[::1]:3") == .v6(0, 1))
        #expect(try host("[2001:db8::7]:3") == .v6(0x2001_0db8_0000_0000, 7))
        #expect(try host("127.9.9.9:1").isLoopback)
        #expect(try !host("128.0.0.1:1").isLoopback)
        #expect(try host("0.0.0.0:1").connectDestination == .v4(0x7f00_0001))
    }

    @Test("this host's addresses include loopback and every interface's address")
    func localAddresses() {
        let local = localHostAddresses()
        #expect(local.contains(.v4(0x7f00_0001)))
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return }
        defer { freeifaddrs(list) }
        var entry = list
        while let current = entry {
            if let address = current.pointee.ifa_addr, Int32(address.pointee.sa_family) == AF_INET {
                let value = address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr.s_addr }
                #expect(local.contains(.v4(UInt32(bigEndian: value))))
            }
            entry = current.pointee.ifa_next
        }
    }
}
