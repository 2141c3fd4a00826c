import Glibc

/// Unbuffered line output for the tools: each line is one write(2), so per-second lines
/// reach a pipe at once and lines from different threads never interleave mid-line.
public enum StandardStream: Sendable {
    case output
    case error

    public func writeLine(_ line: String) {
        var text = line + "\n"
        text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let written = write(self == .output ? 1 : 2, bytes.baseAddress! + offset, bytes.count - offset)
                if written > 0 {
                    offset += written
                } else if written < 0, errno == EINTR {
                    continue
                } else {
                    return  // a closed pipe: nothing useful left to do with the line
                }
            }
        }
    }
}
