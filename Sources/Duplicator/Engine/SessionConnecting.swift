import Glibc
import Ring

/// Opening a session's legs: main and the mirrors connected (after the
/// client's PROXY header when one is awaited), and what a connect's completion means.
extension Session {
    /// Connects main and the mirrors, with the header for `addresses` first
    /// when sending one; starts reading the client.
    func connectUpstream<IO: SessionIO>(addresses: ProxyAddresses?, io: IO) {
        if let version = limits.sendProxy, let proxyHeaderOut {
            proxyHeaderOutLength = ProxyProtocol.encode(version, addresses, into: proxyHeaderOut)
        }
        if records { recordingTap!.connected(addresses ?? io.addresses(fd: legs[.client].fd)) }
        if recordsSessions && recordTap.sampled { recordTap.addresses = addresses ?? io.addresses(fd: legs[.client].fd) }
        let stats = context.stats
        let mainFD = io.openSocket(for: .main)
        guard mainFD >= 0 else {
            context.problems.mainConnectFailed(errno: mainFD < -1 ? -mainFD : Glibc.errno)
            fail(.mainConnectFailure, io: io)
            return
        }
        connect(leg: .main, fd: mainFD, timeoutMs: limits.mainConnectTimeoutMs, io: io)

        for mirror in 0..<limits.mirrorCount {
            let leg = Leg.mirror(mirror)
            let mirrorStats = stats.mirrors[mirror]
            guard limits.mirrorSlotsAbsent & (1 << UInt64(mirror)) == 0 else {
                // A mirror slot this session's configuration does not use
                // (removed, or not yet taken): like a session not sampled, uncounted.
                legs[leg].phase = .closed
                legs[leg].sampledOut = true
                compareTap?.abandon(mirror)
                continue
            }
            guard context.mirrorIsSampled(mirror, limits) else {
                mirrorStats.sessionsSampledOut.bump()
                legs[leg].phase = .closed
                legs[leg].sampledOut = true
                compareTap?.abandon(mirror)
                continue
            }
            guard context.mirrorIsTried(mirror) else {
                mirrorStats.sessionsSkipped.bump()
                legs[leg].phase = .closed
                legs[leg].missing = true
                compareTap?.abandon(mirror)
                continue
            }
            let fd = io.openSocket(for: leg)
            guard fd >= 0 else {
                mirrorStats.connectFailures.bump()
                legs[leg].phase = .closed
                legs[leg].missing = true
                compareTap?.abandon(mirror)
                continue
            }
            connect(leg: leg, fd: fd, timeoutMs: limits.mirrorConnectTimeoutMs, io: io)
        }
        armReceive(.client, io: io)
    }

    // MARK: - Connecting

    func connect<IO: SessionIO>(leg: Leg, fd: Int32, timeoutMs: Int, io: IO) {
        legs[leg].fd = fd
        legs[leg].phase = .connecting
        legs[leg].inFlight &+= 1
        io.connect(fd: fd, leg: leg, timeoutMs: timeoutMs, tag: tag(.connect, leg),
                   timeoutTag: tag(.connectTimeout, leg))
    }

    func connected<IO: SessionIO>(_ leg: Leg, _ outcome: Outcome, io: IO) {
        guard legs[leg].phase == .connecting else { return }
        if outcome.succeeded {
            legs[leg].phase = .open
            if leg.isMirror {
                context.stats.mirrors[leg.mirrorIndex].sessionsMirrored.bump()
                context.mirrorConnected(leg.mirrorIndex)
            }
            kickSend(leg, io: io)
            armReceive(leg, io: io)
            return
        }
        if leg == .main {
            if legs[leg].flushing {
                closeLeg(leg, io: io)
            } else {
                if case .cancelled = outcome {
                    context.problems.mainConnectTimedOut()
                } else {
                    context.problems.mainConnectFailed(errno: outcome.errno)
                }
                fail(.mainConnectFailure, io: io)
            }
            return
        }
        let mirror = leg.mirrorIndex
        if case .cancelled = outcome {
            context.stats.mirrors[mirror].connectTimeouts.bump()
        } else {
            context.stats.mirrors[mirror].connectFailures.bump()
        }
        context.mirrorConnectFailed(mirror, errno: outcome.errno)
        context.stats.mirrors[mirror].bytesMissed.bump(legs[leg].queue.bytes)
        legs[leg].missing = true
        compareTap?.abandon(mirror)
        closeLeg(leg, io: io)
    }
}
