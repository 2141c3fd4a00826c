import Glibc

/// The process's descriptor limit (RLIMIT_NOFILE): a thousand connections on each side
/// of a test do not fit the usual soft limit of 1024.
public enum FileDescriptorLimit {
    /// The soft limit now.
    public static var current: Int {
        var limit = rlimit()
        guard getrlimit(resource, &limit) == 0 else { return 1024 }
        return limit.rlim_cur >= rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur)  // RLIM_INFINITY is all ones
    }

    /// Raises the soft limit as far as the hard limit allows and returns the new soft limit.
    @discardableResult
    public static func raiseToHardLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(resource, &limit) == 0 else { return current }
        if limit.rlim_cur != limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(resource, &raised) != 0 {
                // An infinite hard limit is capped by fs.nr_open; 1 Mi is its default.
                raised.rlim_cur = min(limit.rlim_max, 1 << 20)
                _ = setrlimit(resource, &raised)
            }
        }
        return current
    }

    private static var resource: __rlimit_resource_t { __rlimit_resource_t(RLIMIT_NOFILE.rawValue) }
}
