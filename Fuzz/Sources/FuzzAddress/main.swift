import FuzzChecks

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzAddress(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    FuzzChecks.address(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}
