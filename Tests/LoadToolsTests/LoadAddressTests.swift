import Glibc
import LoadTools
import Testing

extension LoadToolsTests {
    @Suite struct LoadAddressTests {
        @Test(arguments: [
            ("127.0.0.1:8080", "127.0.0.1", UInt16(8080)),
            (":9000", nil, 9000),
            ("[::1]:80", "::1", 80),
            ("localhost:0", "localhost", 0),
            ("[fe80::1%lo]:65535", "fe80::1%lo", 65535),
            ("0.0.0.0:007", "0.0.0.0", 7),
        ] as [(String, String?, UInt16)])
        func parsesGoodAddresses(text: String, host: String?, port: UInt16) throws {
            let address = try LoadAddress(parsing: text)
            #expect(address.host == host)
            #expect(address.port == port)
        }

        @Test func describesAsWritten() throws {
            for text in ["127.0.0.1:8080", ":9000", "[::1]:80", "localhost:1"] {
                #expect(try LoadAddress(parsing: text).description == text)
            }
        }

        @Test(arguments: [
            ("", LoadAddressError.empty),
            ("8080", .missingPort("8080")),
            ("localhost", .missingPort("localhost")),
            ("localhost:", .missingPort("localhost:")),
            ("host:http", .invalidPort("http", in: "host:http")),
            ("host:65536", .invalidPort("65536", in: "host:65536")),
            ("host:-1", .invalidPort("-1", in: "host:-1")),
            ("host:+80", .invalidPort("+80", in: "host:+80")),
            ("host:123456", .invalidPort("123456", in: "host:123456")),
            ("::1:80", .unbracketedIPv6("::1:80")),
            ("[::1", .unclosedBracket("[::1")),
            ("[::1]80", .missingPort("[::1]80")),
            ("[]:80", .emptyBracketedHost("[]:80")),
        ])
        func rejectsBadAddresses(text: String, expected: LoadAddressError) {
            #expect(throws: expected) { try LoadAddress(parsing: text) }
            #expect(!expected.description.contains("\n"))
        }

        @Test func resolvesWithoutNameLookups() throws {
            #expect(try LoadAddress(parsing: ":0").resolve(for: .listen).description == "0.0.0.0:0")
            #expect(try LoadAddress(parsing: ":80").resolve(for: .connect).description == "127.0.0.1:80")
            #expect(try LoadAddress(parsing: "[::1]:80").resolve(for: .connect).description == "[::1]:80")
            let ipv6 = try LoadAddress(parsing: "[::]:81").resolve(for: .listen)
            #expect(ipv6.family == AF_INET6)
            #expect(ipv6.port == 81)
        }

        @Test func resolvesLocalhostFromTheHostsFile() throws {
            let address = try LoadAddress(parsing: "localhost:8080").resolve(for: .connect)
            #expect(address.description == "127.0.0.1:8080")
        }

        @Test func reportsUnusableAddresses() throws {
            #expect(throws: LoadAddressError.portZeroForConnect(":0")) {
                try LoadAddress(parsing: ":0").resolve(for: .connect)
            }
            #expect(throws: LoadAddressError.unresolvable(host: "zz::1", reason: "not a valid IPv6 address")) {
                try LoadAddress(parsing: "[zz::1]:80").resolve(for: .connect)
            }
            let unresolvable = LoadAddressError.unresolvable(host: "nowhere", reason: "Name or service not known")
            #expect(unresolvable.description == "cannot resolve host 'nowhere': Name or service not known")
        }
    }
}
