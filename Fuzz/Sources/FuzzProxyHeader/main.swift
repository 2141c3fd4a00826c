import FuzzChecks

// The one line of each target: its check (FuzzChecks). The rest is alike in every target.
let check: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt = { start, count in
    FuzzChecks.proxyHeader(UnsafeRawBufferPointer(start: start, count: count))
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

@_cdecl("FuzzProxyHeader_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return runDriver(&argc, &argv, check)
}
