import LifeguardCore
import LifeguardEngine
import Logging
import NIOCore

/// What the admin console and signals ask of the whole daemon (reload, shutdown), beyond one shard.
protocol DaemonControl: AnyObject {
    /// Re-reads the configuration and userlist and applies them; false (after logging why) on failure.
    func reload() -> Bool
    func shutdown(_ mode: ShutdownMode)
}

enum ShutdownMode {
    /// Exit at once.
    case immediate
    /// Stop listening; exit when no client is left (SIGTERM, SHUTDOWN WAIT_FOR_CLIENTS).
    case waitForClients
    /// Pause, stop listening, drop waiting clients; exit when servers are released (SIGINT).
    case waitForServers
}

/// PAUSE / SUSPEND state of the whole pooler.
enum PauseMode {
    case running
    case paused
    case suspended
}

/// A console command whose reply waits for servers to go away.
enum DeferredCommand {
    /// PAUSE [db]: every server of the scope closed.
    case pause(database: String?)
    /// WAIT_CLOSE [db]: no server of the scope left with close_needed.
    case waitClose(database: String?)
}

/// Control-plane state of the whole process: pausing, disabling, draining, and the statistics snapshots
/// behind the console's averages. One object shared by every shard: the console, signals and reload change
/// it with the other loops parked, and the data path only reads it.
final class ShardControl {
    var pauseMode = PauseMode.running
    var pausedDatabases: Set<String> = []
    var disabledDatabases: Set<String> = []
    var pendingReplies: [(session: AdminSession, command: DeferredCommand)] = []
    /// The console session that suspended the pooler; its disconnect resumes (as in PgBouncer).
    weak var suspendingSession: AdminSession?
    /// Pool totals at the last two `stats_period` ticks, and when they were taken.
    var olderStats: [PoolKey: PoolStatistics] = [:]
    var newerStats: [PoolKey: PoolStatistics] = [:]
    var olderStamp = NIODeadline.now() - .seconds(1)
    var newerStamp = NIODeadline.now()
    weak var daemon: DaemonControl?
    /// Set by SHUTDOWN WAIT_FOR_* and SIGTERM/SIGINT: only console logins are accepted.
    var draining: ShutdownMode?
    /// Set when the daemon stops: logins are refused and closing connections say why.
    var stopped = false
}

/// The process's shards, one per engine loop (`threads`), and what acts on all of them: the console's
/// control commands and lists, signals, reload, the statistics line.
///
/// A method that reaches beyond one shard must run inside `acrossShards`, which parks every other loop
/// for its duration, as a single-threaded pooler would be busy with the console command.
final class ShardGroup {
    let loops: LoopGroup
    let shared = SharedState()
    let control = ShardControl()
    let preparedStatements = PreparedStatementRegistry()
    private(set) var shards: [PoolShard] = []
    let logger: Logger
    private var statsTimer: EngineLoop.TimerID?

    init(loops: LoopGroup, configuration: Configuration, authFiles: AuthFiles, logger: Logger) {
        self.loops = loops
        self.logger = logger
        shards = loops.loops.map {
            PoolShard(loop: $0, group: self, configuration: configuration, authFiles: authFiles, logger: logger)
        }
    }

    var first: PoolShard { shards[0] }

    /// Runs `body` on `caller`'s loop with every other shard's loop parked, so it may touch any shard.
    func acrossShards<T>(from caller: PoolShard, _ body: () throws -> T) rethrows -> T {
        try loops.withOthersParked(from: caller.loop, body)
    }

    func start() {
        for shard in shards { shard.startJanitor() }
        let period = max(first.settings.statsPeriod, 1)
        statsTimer = first.loop.scheduleRepeating(every: period) { [unowned self] in
            acrossShards(from: first) { refreshStatistics() }
        }
    }

    /// Stops the periodic work and refuses new logins (at exit).
    func stop() {
        control.stopped = true
        if let statsTimer { first.loop.cancel(statsTimer) }
        statsTimer = nil
        for shard in shards { shard.stop() }
    }

    var isShuttingDown: Bool { control.stopped || control.draining != nil }

    // MARK: Views over all shards (inside acrossShards)

    var clientSessions: [ClientSession] { shards.flatMap { Array($0.clientSessions.values) } }
    var serverConnections: [ServerConnection] { shards.flatMap { Array($0.serverConnections.values) } }
    var adminSessions: [AdminSession] { shards.flatMap { Array($0.adminSessions.values) } }

    /// Each pool once, its shards' parts added up.
    var pools: [PoolSummary] {
        var byKey: [PoolKey: PoolSummary] = [:]
        for shard in shards {
            for pool in shard.allPools {
                byKey[pool.key, default: PoolSummary(key: pool.key, mode: pool.mode)].add(pool)
            }
        }
        return byKey.keys.sorted { ($0.database, $0.user) < ($1.database, $1.user) }.map { byKey[$0]! }
    }

    /// The console as SHOW STATS and SHOW TOTALS count it: a pool of its own.
    var console: PoolSummary {
        var summary = PoolSummary(
            key: PoolKey(database: AdminAccess.databaseName, user: AdminAccess.databaseName), mode: .statement)
        for shard in shards { summary.add(shard.consoleStatistics) }
        return summary
    }

    func pools(of database: String?) -> [PoolSummary] {
        pools.filter { database == nil || $0.key.database == database }
    }
}

// MARK: Control (inside acrossShards)

extension ShardGroup {
    var isSuspended: Bool { control.pauseMode == .suspended }

    /// The shards' own pools (one per shard and key) of `database`, or all.
    private func shardPools(of database: String?) -> [Pool] {
        shards.flatMap { $0.allPools }.filter { database == nil || $0.key.database == database }
    }

    /// Stops handing out servers in the scope and closes them as they come free.
    func pause(database: String?) {
        if let database { control.pausedDatabases.insert(database) } else { control.pauseMode = .paused }
        for pool in shardPools(of: database) { pool.closeIdleServers(reason: "pause") }
    }

    func resume(database: String?) {
        let wasSuspended = isSuspended
        if let database { control.pausedDatabases.remove(database) } else { control.pauseMode = .running }
        control.suspendingSession = nil
        if wasSuspended {
            for client in clientSessions { client.resumeReads() }
            for server in serverConnections { server.resumeReads() }
        }
        for pool in shardPools(of: database) { pool.resumeAfterPause() }
        // A PAUSE still waiting for servers has been overtaken by the RESUME.
        control.pendingReplies.removeAll { pending in
            if case .pause = pending.command {
                pending.session.finishDeferred(tag: "PAUSE")
                return true
            }
            return false
        }
    }

    /// Marks every server of the scope to be closed when next released; idle ones close now.
    func reconnect(database: String?) {
        for pool in shardPools(of: database) { pool.shard.reconnect(pool: pool) }
    }

    /// Drops every client and server of the scope; the scope stays paused until RESUME.
    func kill(database: String?) {
        if let database { control.pausedDatabases.insert(database) } else {
            for pool in shardPools(of: nil) { control.pausedDatabases.insert(pool.key.database) }
        }
        let forcedOff = PoolerError("admin forced disconnect")
        for client in clientSessions where database == nil || client.pool?.key.database == database {
            client.kill(forcedOff)
        }
        for server in serverConnections where database == nil || server.pool.key.database == database {
            server.close(reason: "admin forced disconnect")
        }
    }

    /// At exit: clients are closed (told why when they wait for an answer), console sessions are told the
    /// pooler is shutting down, servers get Terminate.
    func closeAllConnections() {
        for client in clientSessions { client.closeForExit() }
        for session in adminSessions { session.closeWithFatal(.shuttingDown) }
        for server in serverConnections { server.terminate(reason: "pooler is shutting down") }
    }

    /// Answers deferred PAUSE / WAIT_CLOSE replies whose condition now holds.
    func completeDeferredReplies() {
        guard !control.pendingReplies.isEmpty else { return }
        var stillWaiting: [(session: AdminSession, command: DeferredCommand)] = []
        for entry in control.pendingReplies {
            switch entry.command {
            case .pause(let database):
                if serverCount(of: database) == 0 {
                    entry.session.finishDeferred(tag: "PAUSE")
                } else {
                    stillWaiting.append(entry)
                }
            case .waitClose(let database):
                let closing = serverConnections.contains {
                    $0.closeNeeded && (database == nil || $0.pool.key.database == database)
                }
                if closing { stillWaiting.append(entry) } else { entry.session.finishDeferred(tag: "WAIT_CLOSE") }
            }
        }
        control.pendingReplies = stillWaiting
    }

    func serverCount(of database: String?) -> Int {
        shardPools(of: database).reduce(0) { $0 + $1.serverCount }
    }

    /// A console session waiting for a deferred reply went away: nobody to answer any more.
    func dropPendingReplies(of session: AdminSession) {
        control.pendingReplies.removeAll { $0.session === session }
    }

    // MARK: Statistics

    /// Rotates the snapshots behind the averages and writes PgBouncer's `stats:` line.
    func refreshStatistics() {
        control.olderStats = control.newerStats
        control.olderStamp = control.newerStamp
        control.newerStamp = .now()
        let pools = self.pools + [console]
        control.newerStats = Dictionary(uniqueKeysWithValues: pools.map { ($0.key, $0.stats) })
        guard first.settings.logStats else { return }
        let average = averages(of: pools)
        logger.info(
            "stats: \(average.transactions) xacts/s, \(average.queries) queries/s, \(average.clientParses) client parses/s, \(average.serverParses) server parses/s, \(average.binds) binds/s, in \(average.bytesReceived) B/s, out \(average.bytesSent) B/s, xact \(average.transactionMicroseconds) us, query \(average.queryMicroseconds) us, wait \(average.waitMicroseconds) us"
        )
    }

    /// PgBouncer's averages for `pools` at this moment: from the snapshot before last to now.
    func averages(of pools: [PoolSummary]) -> PoolStatistics {
        let now = pools.reduce(PoolStatistics()) { $0 + $1.stats }
        let earlier = pools.reduce(PoolStatistics()) { $0 + (control.olderStats[$1.key] ?? PoolStatistics()) }
        let seconds = Double((NIODeadline.now() - control.olderStamp).nanoseconds) / 1e9
        return now.averages(since: earlier, seconds: seconds)
    }
}

/// One pool as the console lists it: the parts every shard holds of it, added up.
struct PoolSummary {
    let key: PoolKey
    let mode: PoolMode
    private(set) var serverCount = 0
    private(set) var clientCount = 0
    private(set) var longestWaitMicroseconds = 0
    private(set) var stats = PoolStatistics()

    init(key: PoolKey, mode: PoolMode) {
        self.key = key
        self.mode = mode
    }

    mutating func add(_ pool: Pool) {
        serverCount += pool.serverCount
        clientCount += pool.clientCount
        longestWaitMicroseconds = max(longestWaitMicroseconds, pool.longestWaitMicroseconds)
        stats = stats + pool.stats
    }

    mutating func add(_ statistics: PoolStatistics) {
        stats = stats + statistics
    }
}
