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

    public static func + (lhs: PoolStatistics, rhs: PoolStatistics) -> PoolStatistics {
        var sum = lhs
        sum.serverAssignments += rhs.serverAssignments
        sum.transactions += rhs.transactions
        sum.queries += rhs.queries
        sum.bytesReceived += rhs.bytesReceived
        sum.bytesSent += rhs.bytesSent
        sum.transactionMicroseconds += rhs.transactionMicroseconds
        sum.queryMicroseconds += rhs.queryMicroseconds
        sum.waitMicroseconds += rhs.waitMicroseconds
        sum.clientParses += rhs.clientParses
        sum.serverParses += rhs.serverParses
        sum.binds += rhs.binds
        sum.clientLogins += rhs.clientLogins
        return sum
    }

    /// The per-second rates and per-event means between `earlier` and these totals, over `seconds`
    /// (PgBouncer's `avg_` columns, recomputed every `stats_period`).
    public func averages(since earlier: PoolStatistics, seconds: Double) -> PoolStatistics {
        let period = max(seconds, 1e-9)
        func rate(_ path: KeyPath<PoolStatistics, Int>) -> Int {
            Int((Double(self[keyPath: path] - earlier[keyPath: path]) / period).rounded())
        }
        func mean(_ time: KeyPath<PoolStatistics, Int>, per count: KeyPath<PoolStatistics, Int>) -> Int {
            let events = self[keyPath: count] - earlier[keyPath: count]
            return events > 0 ? (self[keyPath: time] - earlier[keyPath: time]) / events : 0
        }
        var average = PoolStatistics()
        average.serverAssignments = rate(\.serverAssignments)
        average.transactions = rate(\.transactions)
        average.queries = rate(\.queries)
        average.bytesReceived = rate(\.bytesReceived)
        average.bytesSent = rate(\.bytesSent)
        average.transactionMicroseconds = mean(\.transactionMicroseconds, per: \.transactions)
        average.queryMicroseconds = mean(\.queryMicroseconds, per: \.queries)
        average.waitMicroseconds = mean(\.waitMicroseconds, per: \.serverAssignments)
        average.clientParses = rate(\.clientParses)
        average.serverParses = rate(\.serverParses)
        average.binds = rate(\.binds)
        average.clientLogins = rate(\.clientLogins)
        return average
    }
}
