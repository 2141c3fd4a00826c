/// Renders a `StatsSnapshot` in the Prometheus text exposition format
/// (version 0.0.4): `# HELP` and `# TYPE` before each family, counters
/// ending in `_total`, label values escaped.
public enum PrometheusText {
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public static func render(_ snapshot: StatsSnapshot) -> String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: UInt64)]) {
            out += Self.family(name, type, help, samples)
        }
        // The usual build-info idiom: a constant 1 whose label says what runs.
        family("duplicator_build_info", "gauge", "The running build; its version is the label.",
               [("version=\"\(escape(BuildInfo.version))\"", 1)])
        if !snapshot.backend.isEmpty {
            family("duplicator_backend", "gauge", "The IO backend the workers run on: io_uring, or epoll where io_uring cannot be used (--backend).",
                   [("backend=\"\(escape(snapshot.backend))\"", 1)])
        }
        family("duplicator_sessions_accepted_total", "counter", "Client connections accepted.",
               [("", snapshot.sessionsAccepted)])
        family("duplicator_worker_sessions_accepted_total", "counter", "Client connections accepted, per worker (--accept-gathering puts them on one worker below saturation).",
               snapshot.workerSessionsAccepted.enumerated().map { ("worker=\"\($0.offset)\"", $0.element) })
        if let gathered = snapshot.acceptGathered {
            family("duplicator_accept_gathered", "gauge", "1 while new clients go to one worker (--accept-gathering auto, every worker far from busy), 0 while they spread over all.",
                   [("", gathered)])
            family("duplicator_worker_busy_permille", "gauge", "Each worker's busy fraction over its last tick (its thread's CPU time over the tick), in thousandths: what --accept-gathering decides on.",
                   snapshot.workerBusyPermille.enumerated().map { ("worker=\"\($0.offset)\"", $0.element) })
        }
        family("duplicator_sessions_active", "gauge", "Sessions open now, including mirrors still flushing.",
               [("", snapshot.sessionsActive)])
        family("duplicator_sessions_rejected_total", "counter", "Clients closed at once because the proxy had admitted all the sessions its memory bound holds.",
               [("", snapshot.sessionsRejected)])
        family("duplicator_sessions_ended_total", "counter", "Sessions ended, by cause.", [
            ("cause=\"completed\"", snapshot.sessionsCompleted),
            ("cause=\"client_error\"", snapshot.sessionsEndedByClientError),
            ("cause=\"main_connect_failure\"", snapshot.sessionsEndedByMainConnectFailure),
            ("cause=\"main_error\"", snapshot.sessionsEndedByMainError),
            ("cause=\"idle_timeout\"", snapshot.sessionsEndedByIdleTimeout),
            ("cause=\"aborted\"", snapshot.sessionsAborted),
            ("cause=\"bad_proxy_header\"", snapshot.sessionsEndedByBadProxyHeader),
            ("cause=\"tls_handshake\"", snapshot.sessionsEndedByTLSHandshake),
        ])
        family("duplicator_tls_handshakes_active", "gauge", "TLS handshakes with clients in progress now (--tls-cert).",
               [("", snapshot.tlsHandshakesActive)])
        family("duplicator_tls_errors_total", "counter", "Established TLS client streams that failed (a record that does not decrypt, a fatal alert).",
               [("", snapshot.tlsErrors)])
        family("duplicator_accept_errors_total", "counter", "Failed accepts (descriptor or memory shortage).",
               [("", snapshot.acceptErrors)])
        family("duplicator_loops_refused_total", "counter", "The proxy's own connections to main or a mirror that came back to its listener (a loop made by NAT or a new local address), refused.",
               [("", snapshot.loopsRefused)])
        family("duplicator_completions_unknown_total", "counter", "io_uring completions of no operation the proxy submitted (a bug: each is also logged once).",
               [("", snapshot.completionsUnknown)])
        family("duplicator_bytes_total", "counter", "Bytes proxied between client and main, by direction.", [
            ("direction=\"client_to_main\"", snapshot.bytesClientToMain),
            ("direction=\"main_to_client\"", snapshot.bytesMainToClient),
        ])
        family("duplicator_pool_slots", "gauge", "Buffer pool slots the pools may grow to (--max-memory), all workers.",
               [("", snapshot.poolSlots)])
        family("duplicator_pool_slots_grown", "gauge", "Buffer pool slots taken into use so far: the resident part.",
               [("", snapshot.poolSlotsGrown)])
        family("duplicator_pool_slots_in_use", "gauge", "Buffer pool slots held now.", [("", snapshot.poolSlotsInUse)])
        family("duplicator_pool_exhausted_total", "counter", "Receives that found no free slot and waited.",
               [("", snapshot.poolExhausted)])
        family("duplicator_zerocopy_sends_total", "counter", "Sends made zero-copy from the registered pool (--zerocopy).",
               [("", snapshot.zeroCopySends)])
        family("duplicator_zerocopy_copied_total", "counter", "Zero-copy sends the kernel copied after all (every one towards this host).",
               [("", snapshot.zeroCopyCopied)])
        let mirrors = snapshot.mirrors
        func perMirror(_ name: String, _ type: String, _ help: String, _ value: (StatsSnapshot.Mirror) -> UInt64) {
            family(name, type, help, mirrors.map { (Self.mirrorLabel($0), value($0)) })
        }
        perMirror("duplicator_mirror_sessions_total", "counter", "Sessions whose connect to the mirror succeeded.") { $0.sessionsMirrored }
        perMirror("duplicator_mirror_sampled_out_sessions_total", "counter", "Sessions the mirror was left out of by its sampling (-m ADDR@P%).") { $0.sessionsSampledOut }
        perMirror("duplicator_mirror_bytes_total", "counter", "Client bytes sent to the mirror.") { $0.bytesSent }
        perMirror("duplicator_mirror_lag_cuts_total", "counter", "Sessions in which the mirror fell more than its backlog behind (or was still behind when its linger ended) and was cut.") { $0.sessionsCutForLag }
        perMirror("duplicator_mirror_pool_share_cuts_total", "counter", "Sessions in which the mirror was cut because mirrors held their share of the pool and it lagged most.") { $0.sessionsCutForPoolShare }
        perMirror("duplicator_mirror_missed_bytes_total", "counter", "Client bytes the mirror did not get (cut, failed or skipped).") { $0.bytesMissed }
        perMirror("duplicator_mirror_connect_failures_total", "counter", "Mirror connects that failed.") { $0.connectFailures }
        perMirror("duplicator_mirror_connect_timeouts_total", "counter", "Mirror connects that timed out.") { $0.connectTimeouts }
        perMirror("duplicator_mirror_errors_total", "counter", "Resets and other errors on established mirror connections.") { $0.errors }
        perMirror("duplicator_mirror_skipped_sessions_total", "counter", "Sessions not mirrored while the mirror was backing off.") { $0.sessionsSkipped }
        perMirror("duplicator_mirror_reply_bytes_total", "counter", "Bytes the mirror replied (discarded).") { $0.replyBytes }
        perMirror("duplicator_mirror_drains_total", "counter", "Receives that discarded the mirror's replies (the name is older than --mirror-discard-batch).") { $0.discards }
        perMirror("duplicator_mirror_sends_total", "counter", "Sends that carried bytes to the mirror (batched: fewer than receives).") { $0.sends }
        perMirror("duplicator_mirror_backing_off", "gauge", "Workers resting the mirror after repeated connect failures.") { $0.workersBackingOff }
        // Removed mirrors too: the copies a reload let finish are counted under the mirror they went to.
        family("duplicator_mirror_retired_sessions_total", "counter",
               "Copies to a mirror in sessions that began before a reload removed it, counted as each finished (flushed and closed); for every mirror the process has had.",
               snapshot.everyMirror.map { (Self.mirrorLabel($0), $0.sessionsRetired) })
        out += renderComparisons(mirrors)
        if snapshot.dumping { out += renderDumps(mirrors) }
        if let recordings = snapshot.recordings { out += renderRecordings(recordings, truncatedBytes: snapshot.recordingTruncatedBytes) }
        return out
    }

    /// One family: `# HELP` and `# TYPE`, then each sample (its name is the
    /// family's plus `suffix`, for a histogram's `_bucket`, `_sum` and `_count`).
    static func family(_ name: String, _ type: String, _ help: String,
                       _ samples: [(labels: String, value: UInt64)], suffixes: [String]? = nil) -> String {
        var out = "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n"
        for (index, sample) in samples.enumerated() {
            let sampleName = name + (suffixes?[index] ?? "")
            out += sample.labels.isEmpty ? "\(sampleName) \(sample.value)\n" : "\(sampleName){\(sample.labels)} \(sample.value)\n"
        }
        return out
    }

    static func mirrorLabel(_ mirror: StatsSnapshot.Mirror) -> String { "mirror=\"\(escape(mirror.name))\"" }

    /// `--compare`: the verdict of each (session, mirror), and where diverging replies first differed.
    static func renderComparisons(_ mirrors: [StatsSnapshot.Mirror]) -> String {
        var out = family("duplicator_mirror_compared_sessions_total", "counter",
                         "With --compare: (session, mirror) pairs by how the mirror's reply stream compared with main's; each pair counted once, when its session ends.",
                         mirrors.flatMap { mirror in
                             ReplyComparison.Verdict.allCases.map {
                                 ("\(mirrorLabel(mirror)),result=\"\($0.label)\"", mirror.compared($0))
                             }
                         })
        var samples: [(labels: String, value: UInt64)] = []
        var suffixes: [String] = []
        for mirror in mirrors {
            let label = mirrorLabel(mirror)
            var cumulative: UInt64 = 0
            for (bucket, count) in mirror.divergenceOffsetBuckets.enumerated() {
                cumulative += count
                let bound = bucket < ComparisonStats.divergenceOffsetBounds.count
                    ? String(ComparisonStats.divergenceOffsetBounds[bucket]) : "+Inf"
                samples.append(("\(label),le=\"\(bound)\"", cumulative))
                suffixes.append("_bucket")
            }
            samples += [(label, mirror.divergenceOffsetSum), (label, cumulative)]
            suffixes += ["_sum", "_count"]
        }
        out += family("duplicator_mirror_divergence_offset_bytes", "histogram",
                      "With --compare: where in the reply stream a diverged mirror first differed from main.",
                      samples, suffixes: suffixes)
        return out
    }

    /// `--dump-dir`: what became of each pcapng dump of a differing pair.
    static func renderDumps(_ mirrors: [StatsSnapshot.Mirror]) -> String {
        family("duplicator_mirror_dumps_total", "counter",
               "With --dump-dir: pcapng dumps of (session, mirror) pairs that diverged, were shorter or longer: written, skipped past --dump-max-files, dropped because the writer's queue was full, or failed.",
               mirrors.flatMap { mirror in
                   DumpWriter.Result.allCases.map {
                       ("\(mirrorLabel(mirror)),result=\"\($0.label)\"", mirror.dumps[$0.rawValue])
                   }
               })
            + family("duplicator_mirror_dump_truncated_bytes_total", "counter",
                     "With --dump-dir: bytes past --dump-bytes per direction, left out of the dumps written.",
                     mirrors.map { (mirrorLabel($0), $0.dumpTruncatedBytes) })
    }

    /// `--record-dir`: what became of each session's recording.
    static func renderRecordings(_ counts: [UInt64], truncatedBytes: UInt64) -> String {
        family("duplicator_recordings_total", "counter",
               "With --record-dir: sessions written as pcapng, left out by --record-sample, skipped once --record-max-bytes was reached (recording stops), dropped because the writer's queue was full, or failed (a full disk).",
               RecordWriter.Result.allCases.map { ("result=\"\($0.label)\"", counts[$0.rawValue]) })
            + family("duplicator_recording_truncated_bytes_total", "counter",
                     "With --record-dir: bytes past --record-bytes per direction, left out of the recordings written.",
                     [("", truncatedBytes)])
    }

    /// Label values escape backslash, double quote and newline.
    static func escape(_ value: String) -> String {
        var escaped = ""
        for character in value {
            switch character {
            case "\\": escaped += "\\\\"
            case "\"": escaped += "\\\""
            case "\n": escaped += "\\n"
            default: escaped.append(character)
            }
        }
        return escaped
    }
}
