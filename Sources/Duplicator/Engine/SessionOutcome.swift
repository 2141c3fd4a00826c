import Glibc

extension Session {
    /// What a completion's result means, decoded once where completions are
    /// dispatched (`handle`), the normal outcomes apart from the errors.
    enum Outcome {
        /// A receive or send moved this many bytes (> 0); a connect or
        /// shutdown succeeded (0).
        case done(Int)
        /// A receive found the peer's EOF; a send that moved nothing.
        case endOfStream
        /// A receive found no free slot (ENOBUFS).
        case noBuffer
        /// Cancelled (ECANCELED), or its timeout passed first (ETIME).
        case cancelled(errno: Int32)
        case failed(errno: Int32)

        /// A receive's or send's result: 0 is the end of the stream.
        @inline(__always)
        init(transfer result: Int32) {
            self = result > 0 ? .done(Int(result)) : result == 0 ? .endOfStream : Self(error: result)
        }

        /// A connect's or shutdown's result: 0 is success.
        @inline(__always)
        init(status result: Int32) {
            self = result >= 0 ? .done(Int(result)) : Self(error: result)
        }

        private init(error result: Int32) {
            switch -result {
            case ENOBUFS: self = .noBuffer
            case ECANCELED, ETIME: self = .cancelled(errno: -result)
            default: self = .failed(errno: -result)
            }
        }

        var succeeded: Bool {
            if case .done = self { true } else { false }
        }

        /// The error's number (0 for the normal outcomes).
        var errno: Int32 {
            switch self {
            case .done, .endOfStream: 0
            case .noBuffer: ENOBUFS
            case .cancelled(let code), .failed(let code): code
            }
        }
    }
}
