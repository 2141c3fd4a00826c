import FuzzChecks

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzProxyHeader(_ start: UnsafeRawPointer?, _ count: Int) -> CInt {
    FuzzChecks.proxyHeader(UnsafeRawBufferPointer(start: start, count: count))
    return 0
}
