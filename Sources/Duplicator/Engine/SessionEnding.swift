import Ring

/// How a session ends: a mirror cut, the client's side ended (completed or
/// failed), each leg closed once nothing is in flight on it, and the session
/// over when every leg is.
extension Session {
    public enum EndCause: Sendable {
        case completed, clientError, mainConnectFailure, mainError, idleTimeout, aborted
        /// `--accept-proxy`: the client's PROXY protocol header was missing,
        /// malformed, oversized, or not whole by its deadline.
        case badProxyHeader
    }

    /// Why a mirror is disconnected for the rest of a session.
    enum MirrorCut {
        /// It fell more than its backlog limit behind, or had not taken the
        /// whole stream when its linger ended.
        case lag
        /// Mirrors together held their share of the pool; this session's
        /// laggiest mirror gave its slots back.
        case poolShare
        /// An error on its connection, or the session was aborted.
        case failure
    }

    /// Disconnects a mirror for the rest of this session; what it had not
    /// been sent counts as missed, and so will what the client sends later.
    func cutMirror<IO: SessionIO>(_ leg: Leg, _ cause: MirrorCut, alsoMissed: Int = 0, io: IO) {
        guard legs[leg].phase != .closed, legs[leg].phase != .closing else { return }
        let stats = context.stats.mirrors[leg.mirrorIndex]
        switch cause {
        case .lag: stats.sessionsCutForLag.bump()
        case .poolShare: stats.sessionsCutForPoolShare.bump()
        case .failure: break
        }
        stats.bytesMissed.bump(legs[leg].queue.bytes + alsoMissed)
        legs[leg].missing = true
        compareTap?.abandon(leg.mirrorIndex)
        closeLeg(leg, io: io)
    }

    /// The client's session failed: close the client and main at once; the
    /// mirrors flush what they have, shut down and linger.
    func fail<IO: SessionIO>(_ cause: EndCause, io: IO) {
        guard !isEnding else { return }
        end(cause, io: io)
    }

    func end<IO: SessionIO>(_ cause: EndCause, io: IO) {
        _isEnding = true
        context.sessionsEnding += 1
        endCause = cause
        let stats = context.stats
        switch cause {
        case .completed: stats.sessionsCompleted.bump()
        case .clientError: stats.sessionsEndedByClientError.bump()
        case .mainConnectFailure: stats.sessionsEndedByMainConnectFailure.bump()
        case .mainError: stats.sessionsEndedByMainError.bump()
        case .idleTimeout: stats.sessionsEndedByIdleTimeout.bump()
        case .aborted: stats.sessionsAborted.bump()
        case .badProxyHeader: stats.sessionsEndedByBadProxyHeader.bump()
        }
        stopAwaitingProxyHeader(io: io)
        lingerDeadlineMs = context.nowMs + UInt64(limits.mirrorLingerMs)
        closeLeg(.client, io: io)
        let mainPhase = legs[.main].phase
        if cause == .clientError && (mainPhase == .open || mainPhase == .connecting) && !legs[.main].shutdownIssued {
            // The client is gone, but main still gets every byte the client
            // sent before it failed (as the mirrors do), then our FIN; its
            // replies are discarded, and the linger bounds all of it.
            legs[.main].flushing = true
            legs[.main].shutdownWanted = true
            kickSend(.main, io: io)
            armReceive(.main, io: io)
        } else {
            // Main's stream ends here unfinished (unless its EOF came): its
            // pairs cannot be decided, and a mirror that waited for main
            // (`mirrorShouldWait`) reads on, to its EOF.
            let mainUnfinished = cause != .completed && legs[.main].read != .ended
            closeLeg(.main, io: io)
            if mainUnfinished, let compareTap {
                compareTap.abandonAll(mirrors: context.limits.mirrorCount)
                resumeMirrorReplies(io: io)
            }
        }
        // Mirrors, connected or still connecting, get the rest of what they
        // are owed, then shut down; `tick` closes them after the linger time.
        for leg in mirrorLegs {
            if legs[leg].phase == .idle {
                // Never started (main failed first): nothing to flush.
                closeLeg(leg, io: io)
                continue
            }
            legs[leg].shutdownWanted = true
            kickSend(leg, io: io)
        }
        settleSession()
    }

    func closeLeg<IO: SessionIO>(_ leg: Leg, io: IO) {
        switch legs[leg].phase {
        case .closing, .closed: return
        case .idle:
            legs[leg].phase = .closed
            settleSession()
            return
        case .connecting, .open:
            legs[leg].phase = .closing
        }
        dropQueue(leg, io: io)
        if legs[leg].inFlight > 0 {
            // Once: a closing leg is never closed again.
            io.cancel(fd: legs[leg].fd, tag: tag(.cancel, leg))
        } else {
            finishClose(leg, io: io)
        }
    }

    /// After each completion: a closing leg with nothing in flight is closed.
    func settle<IO: SessionIO>(_ leg: Leg, io: IO) {
        if legs[leg].phase == .closing && legs[leg].inFlight == 0 {
            finishClose(leg, io: io)
        }
    }

    func finishClose<IO: SessionIO>(_ leg: Leg, io: IO) {
        dropQueue(leg, io: io)
        io.close(fd: legs[leg].fd, tag: tag(.close, leg))
        legs[leg].fd = -1
        legs[leg].phase = .closed
        if leg.isMirror { context.mirrorLegClosed(leg.mirrorIndex) }
        settleSession()
    }

    /// The session is over when every leg is closed.
    func settleSession() {
        guard isActive, isEnding else { return }
        for leg in allLegs where legs[leg].phase != .closed { return }
        _isActive = false
        _waitingForBuffers = false
        if let compareTap { recordVerdicts(compareTap) }
        if recordsSessions, let request = recordTap.finish(nowUs: context.nowUs) { context.recordSink?.submit(request) }
        context.sessionsEnding -= 1
        context.stats.sessionsActive.drop()
    }
}
