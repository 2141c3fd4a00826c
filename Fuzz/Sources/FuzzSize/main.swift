import FuzzChecks

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSize(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    FuzzChecks.size(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}
