/// Why a file cannot be read as a capture: one line for the operator,
/// naming the file and what is wrong with it.
public struct CaptureError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
