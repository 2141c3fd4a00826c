import FuzzChecks

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDuration(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    FuzzChecks.duration(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}
