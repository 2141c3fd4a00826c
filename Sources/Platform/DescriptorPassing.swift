import CLinuxSystem
import Glibc

/// Descriptors passed between processes over a connected Unix socket
/// (SCM_RIGHTS), and who is at the other end (SO_PEERCRED): what a
/// handover of listening sockets to a new process is made of.
public enum DescriptorPassing {
    /// The most descriptors one message carries.
    public static let descriptorsMax = Int(SHIM_PASSED_FDS_MAX)

    /// Sends `bytes` with `fds` attached, in one message; each descriptor
    /// arrives in the receiver as a new number for the same open socket.
    public static func send(_ socket: Int32, bytes: [UInt8], fds: [Int32]) throws(SystemCallError) {
        guard fds.count <= descriptorsMax else { throw SystemCallError(operation: "sendmsg (SCM_RIGHTS)", errorNumber: EINVAL) }
        let sent = bytes.withUnsafeBytes { raw in
            fds.withUnsafeBufferPointer { shim_send_with_fds(socket, raw.baseAddress, raw.count, $0.baseAddress, Int32($0.count)) }
        }
        guard sent >= 0 else { throw .lastError("sendmsg (SCM_RIGHTS)") }
        guard sent == bytes.count else { throw SystemCallError(operation: "sendmsg (SCM_RIGHTS): short send", errorNumber: EMSGSIZE) }
    }

    /// One message of at most `capacity` bytes and the descriptors that came
    /// with it (close-on-exec, now the caller's to close); `truncated` when
    /// the kernel or this call had to drop some (those are already closed).
    public static func receive(_ socket: Int32, capacity: Int) throws(SystemCallError)
        -> (bytes: [UInt8], fds: [Int32], truncated: Bool) {
        var bytes = [UInt8](repeating: 0, count: capacity)
        var fds = [Int32](repeating: -1, count: descriptorsMax)
        var count: Int32 = 0
        var truncated: Int32 = 0
        let received = bytes.withUnsafeMutableBytes { raw in
            fds.withUnsafeMutableBufferPointer {
                shim_receive_with_fds(socket, raw.baseAddress, raw.count, $0.baseAddress, Int32($0.count), &count, &truncated)
            }
        }
        guard received >= 0 else { throw .lastError("recvmsg (SCM_RIGHTS)") }
        return (Array(bytes[..<received]), Array(fds[..<Int(count)]), truncated != 0)
    }

    /// The process id and user id of the peer of a connected Unix socket, as
    /// the kernel recorded them at connect (or listen); nil if it cannot say.
    public static func peer(_ socket: Int32) -> (pid: Int32, uid: UInt32)? {
        var pid: Int32 = 0
        var uid: UInt32 = 0
        guard shim_peer_credentials(socket, &pid, &uid) == 0 else { return nil }
        return (pid, uid)
    }
}
