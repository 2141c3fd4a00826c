import Synchronization

extension Atomic where Value == UInt64 {
    /// Adds from the one thread that ever writes this counter. A load and a store
    /// instead of a locked read-modify-write: readers on other threads see each value
    /// whole, and the writer pays nothing for the sharing.
    func addFromOwner(_ amount: UInt64) {
        store(load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }
}

extension Atomic where Value == Int {
    /// As above, for a count that also goes down.
    func addFromOwner(_ amount: Int) {
        store(load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }
}
