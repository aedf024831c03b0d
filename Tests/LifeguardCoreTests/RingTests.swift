import Testing

@testable import LifeguardCore

@Suite struct RingTests {
    /// Interleaved pushes and pops across several growths and wrap-arounds keep first-in, first-out order.
    @Test func keepsOrderThroughGrowthAndWrapping() {
        var ring = Ring<Int>()
        var model: [Int] = []
        var next = 0
        for step in 0..<2000 {
            let pushes = step % 7 == 0 ? 9 : 1
            for _ in 0..<pushes {
                ring.append(next)
                model.append(next)
                next += 1
            }
            if step % 3 != 0, let expected = model.first {
                #expect(ring.removeFirst() == expected)
                model.removeFirst()
            }
            #expect(ring.count == model.count)
            #expect(ring.first == model.first)
        }
        while let value = ring.popFirst() { #expect(value == model.removeFirst()) }
        #expect(ring.isEmpty && model.isEmpty)
        #expect(ring.popFirst() == nil)
    }
}
