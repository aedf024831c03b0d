/// The statements prepared on one server connection, at most `capacity` (`max_prepared_statements`); the
/// least recently used one makes room for a new one.
public struct ServerStatementCache {
    public let capacity: Int
    private var entries: [Int: (statement: PreparedStatement, lastUse: Int)] = [:]
    private var clock = 0

    public init(capacity: Int) {
        self.capacity = capacity
    }

    public var count: Int { entries.count }

    /// Marks `statement` as just used; false when this server does not have it (one lookup for both).
    public mutating func use(_ statement: PreparedStatement) -> Bool {
        guard let index = entries.index(forKey: statement.id) else { return false }
        clock += 1
        entries.values[index].lastUse = clock
        return true
    }

    /// Adds `statement`; returns the least recently used one when that had to go to stay within capacity.
    public mutating func insert(_ statement: PreparedStatement) -> PreparedStatement? {
        clock += 1
        entries[statement.id] = (statement, clock)
        guard entries.count > capacity,
            let oldest = entries.min(by: { $0.value.lastUse < $1.value.lastUse })
        else { return nil }
        entries[oldest.key] = nil
        return oldest.value.statement
    }

    /// Puts back a statement the server still has (its Close was skipped), even above capacity: evicting
    /// another one here would need a Close of its own.
    public mutating func restore(_ statement: PreparedStatement) {
        clock += 1
        entries[statement.id] = (statement, clock)
    }

    public mutating func remove(_ statement: PreparedStatement) {
        entries[statement.id] = nil
    }

    /// After DEALLOCATE ALL or DISCARD ALL on the server.
    public mutating func removeAll() {
        entries = [:]
    }
}
