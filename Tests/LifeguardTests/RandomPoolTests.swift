import Testing

@testable import Lifeguard

@Suite struct RandomPoolTests {
    /// Draws of every size, across refills, come out whole and do not repeat.
    @Test func drawsSpanRefillsWithoutRepeating() {
        let pool = RandomPool()
        var seen = Set<[UInt8]>()
        for size in [4, 18, 4000, 4096, 5000, 8] {
            let bytes = pool.bytes(size)
            #expect(bytes.count == size)
            #expect(seen.insert(bytes).inserted)
        }
        let keys = (0..<2000).map { _ in pool.next64() }
        #expect(Set(keys).count == keys.count)
        #expect(pool.bytes(4096).contains { $0 != 0 }, "bytes handed out are random, not the zeroed spent ones")
    }
}
