import Glibc

/// The Linux calls that Swift's Glibc module does not import, bound by name.
///
/// Swift's Glibc module map leaves out <sys/epoll.h> and <sys/eventfd.h> and is
/// built without _GNU_SOURCE (so no accept4 or pthread_setname_np). LoadTools has
/// no C shim target of its own, so it looks these glibc entry points up once with
/// dlsym and calls them through their exact C signatures (a `@convention(c)`
/// pointer uses the platform C calling convention, unlike `@_silgen_name`).
struct LinuxCalls: Sendable {
    typealias EpollCreate1 = @convention(c) (Int32) -> Int32
    typealias EpollControl = @convention(c) (Int32, Int32, Int32, UnsafeMutableRawPointer?) -> Int32
    typealias EpollWait = @convention(c) (Int32, UnsafeMutableRawPointer?, Int32, Int32) -> Int32
    typealias EventFD = @convention(c) (UInt32, Int32) -> Int32
    typealias Accept4 = @convention(c) (Int32, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?, Int32) -> Int32
    typealias ThreadSetName = @convention(c) (pthread_t, UnsafePointer<CChar>) -> Int32

    let epollCreate1: EpollCreate1
    let epollControl: EpollControl
    let epollWait: EpollWait
    let eventFD: EventFD
    let accept4: Accept4
    let threadSetName: ThreadSetName?

    /// nil only where the C library lacks epoll (not glibc, or a fully static binary).
    static let shared: LinuxCalls? = {
        guard let program = dlopen(nil, RTLD_NOW) else { return nil }
        func symbol<Function>(_ name: String, as type: Function.Type) -> Function? {
            guard let pointer = dlsym(program, name) else { return nil }
            return unsafeBitCast(pointer, to: type)
        }
        guard let epollCreate1 = symbol("epoll_create1", as: EpollCreate1.self),
              let epollControl = symbol("epoll_ctl", as: EpollControl.self),
              let epollWait = symbol("epoll_wait", as: EpollWait.self),
              let eventFD = symbol("eventfd", as: EventFD.self),
              let accept4 = symbol("accept4", as: Accept4.self)
        else { return nil }
        return LinuxCalls(
            epollCreate1: epollCreate1, epollControl: epollControl, epollWait: epollWait,
            eventFD: eventFD, accept4: accept4,
            threadSetName: symbol("pthread_setname_np", as: ThreadSetName.self))
    }()

    static func required() throws(SystemCallError) -> LinuxCalls {
        guard let calls = shared else {
            throw SystemCallError(operation: "bind epoll_create1/epoll_ctl/epoll_wait/eventfd/accept4 with dlsym", errorNumber: ENOSYS)
        }
        return calls
    }
}

/// Linux ABI constants from <sys/epoll.h> and <sys/eventfd.h> (stable kernel ABI).
enum EpollFlag {
    static let readable: UInt32 = 0x001       // EPOLLIN
    static let writable: UInt32 = 0x004       // EPOLLOUT
    static let error: UInt32 = 0x008          // EPOLLERR
    static let hangUp: UInt32 = 0x010         // EPOLLHUP
    static let peerShutdown: UInt32 = 0x2000  // EPOLLRDHUP
}

enum EpollOperation {
    static let add: Int32 = 1     // EPOLL_CTL_ADD
    static let remove: Int32 = 2  // EPOLL_CTL_DEL
    static let modify: Int32 = 3  // EPOLL_CTL_MOD
}
