import Glibc
import LoadTools

/// Why `duplicator demo` failed, in one line (it printed
/// `ExitCode(rawValue: 1)`): what went wrong and what to change.
struct DemoFailure: Error, CustomStringConvertible {
    /// More would need more descriptors than most hosts give a process
    /// (each connection takes four: client, proxy's client side, main, mirror).
    static let connectionsMax = 10_000
    static let sizeBytesMax = 64 << 20

    let description: String

    init(_ description: String) { self.description = description }

    static func explaining(_ result: LoadResult, connections: Int) -> DemoFailure {
        if result.errors > 0 || result.connectionsEstablished < result.connectionsRequested {
            var limit = rlimit()
            let resource = __rlimit_resource_t(7)  // RLIMIT_NOFILE
            let descriptors = getrlimit(resource, &limit) == 0 ? " (open files allowed: \(limit.rlim_cur); "
                + "each connection takes about 4 in this one process)" : ""
            return DemoFailure("demo failed: \(result.connectionsEstablished) of \(connections) connections established, "
                + "\(result.errors) client errors (first: \(result.firstErrorDescription ?? "none"))\(descriptors)")
        }
        if result.requests == 0 { return DemoFailure("demo failed: no request was answered in the time given") }
        return DemoFailure("demo failed: a mirror did not get exactly what main got (see the lines above)")
    }
}
