/// The running totals of one pool, as SHOW STATS reports them per database. Times are in microseconds.
///
/// Each pool's counters are plain integers bumped on its own event loop; SHOW sums them when asked.
public struct PoolStatistics: Sendable, Equatable {
    public var serverAssignments = 0
    public var transactions = 0
    public var queries = 0
    /// Bytes received from clients.
    public var bytesReceived = 0
    /// Bytes sent to clients.
    public var bytesSent = 0
    public var transactionMicroseconds = 0
    public var queryMicroseconds = 0
    public var waitMicroseconds = 0
    public var clientParses = 0
    public var serverParses = 0
    public var binds = 0
    public var clientLogins = 0

    public init() {}

    /// Every counter, so sums and averages treat them alike.
    private static let counters: [any WritableKeyPath<PoolStatistics, Int> & Sendable] = [
        \.serverAssignments, \.transactions, \.queries, \.bytesReceived, \.bytesSent, \.transactionMicroseconds,
        \.queryMicroseconds, \.waitMicroseconds, \.clientParses, \.serverParses, \.binds, \.clientLogins,
    ]

    public static func + (lhs: PoolStatistics, rhs: PoolStatistics) -> PoolStatistics {
        var sum = lhs
        for counter in counters { sum[keyPath: counter] += rhs[keyPath: counter] }
        return sum
    }

    /// The per-second rates and per-event means between `earlier` and these totals, over `seconds`
    /// (PgBouncer's `avg_` columns, recomputed every `stats_period`): times are means per transaction, query
    /// and server assignment, everything else a rate.
    public func averages(since earlier: PoolStatistics, seconds: Double) -> PoolStatistics {
        let period = max(seconds, 1e-9)
        func mean(_ time: KeyPath<PoolStatistics, Int>, per count: KeyPath<PoolStatistics, Int>) -> Int {
            let events = self[keyPath: count] - earlier[keyPath: count]
            return events > 0 ? (self[keyPath: time] - earlier[keyPath: time]) / events : 0
        }
        var average = PoolStatistics()
        for counter in Self.counters {
            average[keyPath: counter] =
                Int((Double(self[keyPath: counter] - earlier[keyPath: counter]) / period).rounded())
        }
        average.transactionMicroseconds = mean(\.transactionMicroseconds, per: \.transactions)
        average.queryMicroseconds = mean(\.queryMicroseconds, per: \.queries)
        average.waitMicroseconds = mean(\.waitMicroseconds, per: \.serverAssignments)
        return average
    }
}
