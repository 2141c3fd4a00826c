import CLiburing

/// A duration the kernel reads when a timeout SQE is submitted; kept in
/// stable memory so it can be shared by every SQE that uses it.
public final class RingTimeout {
    let pointer: UnsafeMutablePointer<__kernel_timespec>
    public let milliseconds: Int

    public init(milliseconds: Int) {
        self.milliseconds = milliseconds
        pointer = .allocate(capacity: 1)
        pointer.initialize(to: __kernel_timespec(tv_sec: Int64(milliseconds / 1000),
                                                 tv_nsec: Int64(milliseconds % 1000) * 1_000_000))
    }

    deinit { pointer.deallocate() }
}
