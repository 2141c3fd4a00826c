import Platform
import Synchronization

/// What another thread uses to stop a running LoadClient.
final class LoadClientControl: Sendable {
    let stopRequested = Atomic<Bool>(false)
    let running = Atomic<Bool>(false)
    let wakeup: WakeupEvent

    init() throws(SystemCallError) {
        wakeup = try WakeupEvent()
    }

    deinit {
        wakeup.close()
    }
}
