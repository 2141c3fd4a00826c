/// How a LoadClient does its IO.
public enum LoadClientBackend: String, Sendable, CaseIterable {
    /// io_uring where the kernel allows it, else epoll (saying why in the result's `backend`).
    case automatic = "auto"
    /// io_uring or an error: a measurement that must not silently change its client.
    case ioUring = "io_uring"
    case epoll
}
