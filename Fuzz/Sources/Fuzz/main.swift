import FuzzChecks
import Glibc

// One libFuzzer executable for every target: FUZZ_TARGET names the check of
// FuzzChecks.all it runs (scripts/fuzz.sh sets it), so a new target is a row
// there and a seed folder, nothing here.

/// The check FUZZ_TARGET names; read once, before the first input.
let selected: @Sendable (UnsafeRawBufferPointer) -> Void = {
    let name = getenv("FUZZ_TARGET").map { String(cString: $0) } ?? ""
    guard let check = FuzzChecks.all.first(where: { $0.name == name })?.check else {
        let known = FuzzChecks.all.map(\.name).joined(separator: ", ")
        let line = "Fuzz: FUZZ_TARGET '\(name)' is not a target; known: \(known)\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
        exit(2)
    }
    return check
}()

let check: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt = { start, count in
    selected(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt { check(start, count) }

// SwiftPM links a debug executable's main to <module>_main (so that tests
// may import executables), which keeps libFuzzer's own main out: this one
// hands the arguments to libFuzzer's driver instead.
@_silgen_name("LLVMFuzzerRunDriver")
func runDriver(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
               _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

@_cdecl("Fuzz_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    _ = selected  // an unknown target is said before libFuzzer starts
    var argc = argc
    var argv = argv
    return runDriver(&argc, &argv, check)
}
