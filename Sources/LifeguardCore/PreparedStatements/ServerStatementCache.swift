/// The statements prepared on one server connection, at most `max_prepared_statements` of them; the least
/// recently used ones make room for a new one.
public struct ServerStatementCache {
    private var entries: [Int: (statement: PreparedStatement, lastUse: Int)] = [:]
    private var clock = 0

    public init() {}

    public var count: Int { entries.count }

    /// Marks `statement` as just used; false when this server does not have it (one lookup for both).
    public mutating func use(_ statement: PreparedStatement) -> Bool {
        guard let index = entries.index(forKey: statement.id) else { return false }
        clock += 1
        entries.values[index].lastUse = clock
        return true
    }

    /// Adds `statement`; returns the least recently used ones that had to go to stay within `capacity`, the
    /// setting of the moment (a console SET that lowered it shrinks the cache at its next insert, as in
    /// PgBouncer).
    public mutating func insert(_ statement: PreparedStatement, capacity: Int) -> [PreparedStatement] {
        clock += 1
        entries[statement.id] = (statement, clock)
        var evicted: [PreparedStatement] = []
        while entries.count > max(1, capacity),
            let oldest = entries.min(by: { $0.value.lastUse < $1.value.lastUse })
        {
            entries[oldest.key] = nil
            evicted.append(oldest.value.statement)
        }
        return evicted
    }

    /// Statements whose Close was skipped since the last ReadyForQuery: the server still has them.
    private var keptBySkippedClose: Set<Int> = []

    /// The server skipped Lifeguard's Close of `statement` (an earlier error in the pipeline): it still has
    /// it, so it is put back, even above capacity, since evicting another one here would need a Close of
    /// its own.
    public mutating func closeSkipped(_ statement: PreparedStatement) {
        clock += 1
        entries[statement.id] = (statement, clock)
        keptBySkippedClose.insert(statement.id)
    }

    /// A Parse of `statement` failed or was skipped, so it created nothing: the statement is gone from the
    /// server, unless its Close earlier in the same skipped run was skipped too and left it there.
    public mutating func parseUndone(_ statement: PreparedStatement, skipped: Bool) {
        if skipped, keptBySkippedClose.contains(statement.id) { return }
        entries[statement.id] = nil
    }

    /// ReadyForQuery: the Sync ended any skipped run.
    public mutating func readyForQuery() {
        if !keptBySkippedClose.isEmpty { keptBySkippedClose.removeAll() }
    }

    public mutating func remove(_ statement: PreparedStatement) {
        entries[statement.id] = nil
    }

    /// After DEALLOCATE ALL or DISCARD ALL on the server.
    public mutating func removeAll() {
        entries = [:]
    }
}
