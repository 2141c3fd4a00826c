import ArgumentParser
import Duplicator

/// Where the copies go (goduplicator's `-m` and `-t`) and how long a
/// mirror is waited for.
struct MirrorOptions: ParsableArguments {
    @Option(name: [.customShort("m"), .customLong("mirror")], help: "A mirror server; repeat or separate with commas for several. ADDR@P% mirrors only about P% of the sessions (chosen per session), e.g. :8082@10%.")
    var mirror: [MirrorList] = []

    @Option(name: [.customShort("t"), .customLong("timeout")], parsing: .unconditional, help: "Mirror connect timeout, Go-style (500ms, 2s).")
    var timeout = Milliseconds(Defaults.mirrorConnectTimeoutMs)

    @Option(name: .customLong("mirror-linger"), parsing: .unconditional, help: "How long mirrors may flush after their client's session ended.")
    var mirrorLinger = Milliseconds(Defaults.mirrorLingerMs)

    @Option(name: .customLong("mirror-turns"), parsing: .unconditional, help: "The client's first turns (bytes after main replied) a mirror gets only once it answered the turn before (SSL/STARTTLS negotiation, greetings); 0: none.")
    var mirrorTurns: Int = Defaults.mirrorTurns

    @Option(name: .customLong("mirror-turn-timeout"), parsing: .unconditional, help: "A mirror that has not answered a kept turn by then gets the next anyway, and is not waited for again in the session.")
    var mirrorTurnTimeout = Microseconds(Defaults.mirrorTurnTimeoutUs)

    @Option(name: .customLong("mirror-slots"), parsing: .unconditional, help: "Mirrors a reload may configure at most (sessions are sized for them at start; default: the mirrors given, or at least 4 with --config).")
    var mirrorSlots: Int?

    /// Every `-m` value's mirrors, in order.
    var mirrors: [MirrorList.Mirror] { mirror.flatMap(\.mirrors) }

    func apply(to config: inout Config) {
        config.mirrorConnectTimeoutMs = timeout.milliseconds
        config.mirrorLingerMs = mirrorLinger.milliseconds
        config.mirrorTurns = mirrorTurns
        config.mirrorTurnTimeoutUs = mirrorTurnTimeout.microseconds
    }
}
