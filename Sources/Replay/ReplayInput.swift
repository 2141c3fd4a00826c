import Glibc

/// The sessions of one or more capture files, and what the files held that
/// could not be replayed, said in lines for the operator.
public struct ReplayInput: Sendable {
    public var sessions: [RecordedSession]
    public var counts: CaptureAssembler.Counts
    /// One line per file that ended inside a record or had blocks skipped.
    public var warnings: [String]

    /// Reads every file (in order) into one set of sessions. A file that is
    /// not a capture, or is corrupt, throws with its path in the message.
    public static func load(paths: [String], serverPort: UInt16?) throws(CaptureError) -> ReplayInput {
        var assembler = CaptureAssembler(serverPort: serverPort)
        var warnings: [String] = []
        for path in try expand(paths) {
            let bytes = try CaptureFile.load(path: path)
            let read: Result<CaptureContents, CaptureError> = bytes.withUnsafeBytes { raw in
                Result { () throws(CaptureError) in try CaptureFile.read(raw) }
            }
            guard case .success(let contents) = read else {
                if case .failure(let error) = read { throw CaptureError("\(path): \(error.message)") }
                return ReplayInput(sessions: [], counts: assembler.counts, warnings: warnings)
            }
            if let offset = contents.truncatedAtOffset {
                warnings.append("\(path): truncated: the file ends inside the record at byte \(offset) "
                    + "(\(contents.packets.count) packets before it are used)")
            }
            if contents.skippedRecords > 0 {
                warnings.append("\(path): \(contents.skippedRecords) blocks of other types or interfaces skipped")
            }
            bytes.withUnsafeBytes { assembler.add(contents, bytes: $0) }
        }
        let sessions = assembler.finish()
        return ReplayInput(sessions: sessions, counts: assembler.counts, warnings: warnings + Self.notes(assembler.counts))
    }

    /// Each path, with a directory replaced by its `.pcap` and `.pcapng`
    /// files in name order (a `--record-dir`).
    static func expand(_ paths: [String]) throws(CaptureError) -> [String] {
        var files: [String] = []
        for path in paths {
            var status = stat()
            guard stat(path, &status) == 0 else { throw CaptureError("\(path): \(String(cString: strerror(errno)))") }
            guard status.st_mode & S_IFMT == S_IFDIR else {
                files.append(path)
                continue
            }
            guard let directory = opendir(path) else { throw CaptureError("\(path): \(String(cString: strerror(errno)))") }
            var names: [String] = []
            while let entry = readdir(directory) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name.hasSuffix(".pcap") || name.hasSuffix(".pcapng") { names.append(name) }
            }
            closedir(directory)
            guard !names.isEmpty else { throw CaptureError("\(path): a directory without .pcap or .pcapng files") }
            files += names.sorted().map { path + "/" + $0 }
        }
        return files
    }

    /// What was skipped and why, one line each.
    static func notes(_ counts: CaptureAssembler.Counts) -> [String] {
        var lines: [String] = []
        if let linkType = counts.unknownLinkType {
            lines.append("\(counts.skipped(.linkType)) packets of link type \(linkType) skipped (not Ethernet, Linux cooked, raw IP or loopback)")
        }
        if counts.skipped(.fragment) > 0 { lines.append("\(counts.skipped(.fragment)) IP fragments skipped (not reassembled)") }
        if counts.skipped(.malformed) > 0 { lines.append("\(counts.skipped(.malformed)) malformed packets skipped") }
        if counts.skippedNoHandshake > 0 {
            lines.append("\(counts.skippedNoHandshake) sessions skipped: their handshake is not in the capture (begun before it)")
        }
        if counts.skippedCut > 0 {
            lines.append("\(counts.skippedCut) sessions skipped: the capture's snap length cut their payloads (capture with -s 0)")
        }
        if counts.skippedHole > 0 {
            lines.append("\(counts.skippedHole) sessions skipped: bytes missing from the capture (dropped packets)")
        }
        return lines
    }
}
