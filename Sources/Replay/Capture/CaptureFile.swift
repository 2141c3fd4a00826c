import Glibc

/// Reading capture files from disk and telling their format by the first
/// bytes: classic pcap (either byte order, micro- or nanoseconds) or pcapng.
public enum CaptureFile {
    /// Larger files are refused: the replayer holds the sessions in memory.
    public static let fileBytesMax = 4 << 30

    public static func read(_ bytes: UnsafeRawBufferPointer) throws(CaptureError) -> CaptureContents {
        if PcapngReader.recognises(bytes) { return try PcapngReader.read(bytes) }
        if PcapReader.recognises(bytes) { return try PcapReader.read(bytes) }
        if bytes.isEmpty { throw CaptureError("an empty file, not a capture") }
        throw CaptureError("not a pcap or pcapng capture (it begins \(preview(bytes)))")
    }

    /// The whole file's bytes.
    public static func load(path: String) throws(CaptureError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CaptureError("\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var status = stat()
        guard fstat(fd, &status) == 0 else { throw CaptureError("\(path): \(String(cString: strerror(errno)))") }
        guard status.st_mode & S_IFMT == S_IFREG else { throw CaptureError("\(path): not a regular file") }
        guard Int(status.st_size) <= fileBytesMax else { throw CaptureError("\(path): larger than 4 GiB") }
        var bytes = [UInt8](repeating: 0, count: Int(status.st_size))
        var done = 0
        var failure: Int32 = 0
        bytes.withUnsafeMutableBytes { raw in
            while done < raw.count {
                let result = Glibc.read(fd, raw.baseAddress! + done, raw.count - done)
                if result < 0 && errno == EINTR { continue }
                if result < 0 { failure = errno }
                if result <= 0 { return }
                done += result
            }
        }
        guard failure == 0 else { throw CaptureError("\(path): \(String(cString: strerror(failure)))") }
        return Array(bytes[0..<done])
    }

    static func preview(_ bytes: UnsafeRawBufferPointer) -> String {
        let shown = bytes.prefix(8).map { byte -> String in
            let digits = String(byte, radix: 16)
            return digits.count == 1 ? "0" + digits : digits
        }
        return shown.joined(separator: " ")
    }
}
