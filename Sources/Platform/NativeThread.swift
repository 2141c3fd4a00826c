import CLinuxSystem
import Glibc

/// A joinable POSIX thread that runs one closure.
///
/// The thread starts with every signal blocked, so SIGINT and SIGTERM reach the
/// process's main thread (or whichever thread waits for them), never an event loop.
public struct NativeThread: Sendable {
    private let handle: pthread_t

    private final class Body {
        let run: () -> Void
        init(_ run: @escaping () -> Void) { self.run = run }
    }

    /// `name` is shown by top -H and gdb (at most 15 bytes are kept).
    public static func start(name: String, _ body: sending @escaping () -> Void) throws(SystemCallError) -> NativeThread {
        let context = Unmanaged.passRetained(Body(body)).toOpaque()

        var allSignals = sigset_t()
        var previousSignals = sigset_t()
        sigfillset(&allSignals)
        pthread_sigmask(SIG_SETMASK, &allSignals, &previousSignals)
        var handle = pthread_t()
        let result = pthread_create(&handle, nil, { context in
            let body = Unmanaged<Body>.fromOpaque(context!).takeRetainedValue()
            body.run()
            return nil
        }, context)
        pthread_sigmask(SIG_SETMASK, &previousSignals, nil)

        guard result == 0 else {
            Unmanaged<Body>.fromOpaque(context).release()
            throw SystemCallError(operation: "pthread_create \(name)", errorNumber: result)
        }
        _ = String(name.utf8.prefix(15))?.withCString { pthread_setname_np(handle, $0) }
        return NativeThread(handle: handle)
    }

    public func join() {
        pthread_join(handle, nil)
    }

    /// For a thread that is never joined: its resources are freed when it ends.
    public func detach() {
        pthread_detach(handle)
    }
}
