import ArgumentParser
import CLinuxSystem
import Duplicator

/// What bounds memory, sessions and time: promise 6 and 7's knobs.
struct LimitOptions: ParsableArguments {
    @Option(name: .customLong("main-connect-timeout"), parsing: .unconditional, help: "Main connect timeout; 0 for the kernel's.")
    var mainConnectTimeout = Milliseconds(Defaults.mainConnectTimeoutMs)

    @Option(name: .customLong("idle-timeout"), parsing: .unconditional, help: "Close a session in which no byte moved between client and main for this long; 0: never.")
    var idleTimeout = Milliseconds(Defaults.idleTimeoutMs)

    @Option(name: .customLong("drain-timeout"), parsing: .unconditional, help: "On SIGINT/SIGTERM, how long live sessions may finish.")
    var drainTimeout = Milliseconds(Defaults.drainTimeoutMs)

    @Option(name: .customLong("backlog"), parsing: .unconditional, help: "Bytes a mirror may fall behind before it is cut for the session.")
    var backlog = ByteSize(Defaults.backlogBytesMax)

    @Option(name: .customLong("backlog-chunks"), parsing: .unconditional, help: "Receives a mirror may fall behind before it is cut (each holds a slot).")
    var backlogChunks: Int = Defaults.backlogChunksMax

    @Option(name: .customLong("max-memory"), parsing: .unconditional, help: "Buffer memory of all threads together: the pools grow with the load up to this (registered, locked memory), and each thread admits only the sessions its share can serve at once (64KiB each at the default slot size); more clients are refused.")
    var maxMemory = ByteSize(Defaults.maxMemoryBytes)

    @Option(name: .customLong("max-sessions"), parsing: .unconditional, help: "Concurrent client sessions per thread at most (--max-memory may admit fewer); more are closed at once.")
    var maxSessions: Int = Defaults.sessionsMax

    @Option(name: .customLong("threads"), parsing: .unconditional, help: "Worker threads, each with its own ring and SO_REUSEPORT listener (default: the CPUs this process may run on).")
    var threads: Int?

    func apply(to config: inout Config) {
        config.mainConnectTimeoutMs = mainConnectTimeout.milliseconds
        config.idleTimeoutMs = idleTimeout.milliseconds
        config.drainTimeoutMs = drainTimeout.milliseconds
        config.backlogBytesMax = backlog.bytes
        config.backlogChunksMax = backlogChunks
        config.maxMemoryBytes = maxMemory.bytes
        config.sessionsMax = maxSessions
        config.threads = threads ?? max(1, Int(shim_cpus_allowed()))
    }
}
