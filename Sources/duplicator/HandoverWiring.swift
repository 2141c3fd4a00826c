import Duplicator
import Glibc
import Logging
import Platform

/// `--handover-socket PATH` wired into the proxy's start (see `Handover`):
/// bind the path first (a bad one is an error before anything is taken),
/// take the listeners from the process that holds it, and once this process
/// accepts on them, tell that one to stop and answer the next handover.
struct HandoverWiring {
    let server: HandoverServer
    let takeover: HandoverTakeover?

    /// Nil without `--handover-socket` (or with `--check`, which takes nothing over).
    static func begin(path: String?, check: Bool, config: Config, metrics: Endpoint?, logger: Logger) throws -> HandoverWiring? {
        guard let path, !check else { return nil }
        let server: HandoverServer
        do { server = try HandoverServer(path: path) } catch { throw ProxyError(error.message) }
        guard let listen = try? config.listen.resolve(role: .listen) else { return HandoverWiring(server: server, takeover: nil) }
        let metricsAddress = metrics.flatMap { try? $0.resolve(role: .listen) }
        let takeover = Handover.takeOver(path: path, listen: listen, metrics: metricsAddress, logger: logger)
        return HandoverWiring(server: server, takeover: takeover)
    }

    /// This process accepts now: the old one stops, and this one holds the path.
    func serve(proxy: Proxy, metricsServer: MetricsServer?, drainTimeout: String, logger: Logger) throws {
        if let takeover {
            do {
                try takeover.confirm()
                logger.notice("handover: took over \(takeover.listeners.count) listeners\(takeover.metricsListener == nil ? "" : " and the metrics listener") from pid \(takeover.peerPID), which stops accepting and drains")
            } catch {
                logger.warning("handover: pid \(takeover.peerPID) did not say it stopped (\(error.message)); serving anyway")
            }
        }
        do {
            try server.serve(offer: {
                guard let listeners = proxy.withListenersForHandover({ fds in fds.map { fcntl($0, F_DUPFD_CLOEXEC, 0) } }) else {
                    return nil
                }
                let metrics = metricsServer.map { fcntl($0.listenerForHandover, F_DUPFD_CLOEXEC, 0) }
                let all = listeners + (metrics.map { [$0] } ?? [])
                guard !all.contains(where: { $0 < 0 }) else {
                    all.filter { $0 >= 0 }.forEach { _ = close($0) }
                    return nil
                }
                return (listeners, metrics)
            }, handOver: { pid in
                logger.notice("handover: pid \(pid) accepts on the listeners now; draining \(proxy.activeSessions) sessions for up to \(drainTimeout), then exiting")
                proxy.stop()
                metricsServer?.stop()
            }, logger: logger)
        } catch {
            throw ProxyError(error.message)
        }
    }
}
