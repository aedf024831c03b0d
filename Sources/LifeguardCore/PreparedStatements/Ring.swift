/// A first-in, first-out queue in one growable ring of slots that it owns outright: the reply queue's hot
/// path pushes and pops a few plain values per message, and both DequeModule's Deque and an array-backed
/// ring spent more on their copy-on-write checks than on the values. Not copyable, so that no second owner
/// of the slots can exist.
struct Ring<Element>: ~Copyable {
    private var slots: UnsafeMutablePointer<Element>
    /// A power of two, so that an index wraps with a mask.
    private var capacity: Int
    private var head = 0
    private(set) var count = 0

    init() {
        capacity = 8
        slots = .allocate(capacity: capacity)
    }

    deinit {
        for offset in 0..<count { (slots + ((head + offset) & (capacity - 1))).deinitialize(count: 1) }
        slots.deallocate()
    }

    var isEmpty: Bool { count == 0 }

    var first: Element? { count == 0 ? nil : slots[head] }

    mutating func append(_ element: Element) {
        if count == capacity { grow() }
        (slots + ((head + count) & (capacity - 1))).initialize(to: element)
        count += 1
    }

    @discardableResult
    mutating func removeFirst() -> Element {
        precondition(count > 0, "removeFirst on an empty ring")
        let element = (slots + head).move()
        head = (head + 1) & (capacity - 1)
        count -= 1
        return element
    }

    mutating func popFirst() -> Element? {
        count == 0 ? nil : removeFirst()
    }

    /// Doubles the slots, moving the elements over in order.
    private mutating func grow() {
        let larger = UnsafeMutablePointer<Element>.allocate(capacity: capacity * 2)
        for offset in 0..<count {
            (larger + offset).moveInitialize(from: slots + ((head + offset) & (capacity - 1)), count: 1)
        }
        slots.deallocate()
        slots = larger
        capacity *= 2
        head = 0
    }
}
