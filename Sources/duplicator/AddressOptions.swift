import ArgumentParser
import Duplicator

/// Where clients connect and where their bytes go first: goduplicator's
/// `-l` and `-f`, and the PROXY protocol on either side.
struct AddressOptions: ParsableArguments {
    // -l and -f are arrays only so that a second one is an error instead of
    // silently replacing the first; `ProxyOptions.makeConfig` takes exactly one of each.
    @Option(name: [.customShort("l"), .customLong("listen")],
            help: ArgumentHelp("Address to listen on: host:port, :port (all interfaces) or [ipv6]:port.", valueName: "listen"))
    var listen: [ListenAddress] = []

    @Option(name: [.customShort("f"), .customLong("forward")],
            help: ArgumentHelp("The main server: its replies go back to the client. :port means localhost.", valueName: "forward"))
    var forward: [ServerAddress] = []

    @Option(name: .customLong("send-proxy"), help: ArgumentHelp("Send a PROXY protocol header (v1: text, v2: binary) with the client's address first to main and to every mirror.", valueName: "version"))
    var sendProxy: ProxyProtocol.Version?

    @Flag(name: .customLong("accept-proxy"), help: "Expect a PROXY protocol header (v1 or v2) from a load balancer on every client connection and take the client's address from it; close clients without a valid one.")
    var acceptProxy = false

    @Option(name: .customLong("proxy-header-timeout"), parsing: .unconditional, help: "With --accept-proxy: close a client whose header has not arrived in this long.")
    var proxyHeaderTimeout = Milliseconds(Defaults.proxyHeaderTimeoutMs)

    func apply(to config: inout Config) {
        config.sendProxy = sendProxy
        config.acceptProxy = acceptProxy
        config.proxyHeaderTimeoutMs = proxyHeaderTimeout.milliseconds
    }
}
