import LifeguardCore
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

/// Control-plane state and actions of a shard: pausing, disabling, killing, reconnecting, and the
/// statistics snapshots behind the console's averages.
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
}

extension PoolShard {
    /// SUSPEND: no socket is read until RESUME (Lifeguard holds no buffered data, so nothing needs flushing).
    var isSuspended: Bool { control.pauseMode == .suspended }

    func isPaused(_ database: String) -> Bool {
        control.pauseMode != .running || control.pausedDatabases.contains(database)
    }

    func pools(of database: String?) -> [Pool] {
        allPools.filter { database == nil || $0.key.database == database }
    }

    /// Stops handing out servers in the scope and closes them as they come free.
    func pause(database: String?) {
        if let database { control.pausedDatabases.insert(database) } else { control.pauseMode = .paused }
        for pool in pools(of: database) { pool.closeIdleServers(reason: "pause") }
    }

    func resume(database: String?) {
        let wasSuspended = isSuspended
        if let database { control.pausedDatabases.remove(database) } else { control.pauseMode = .running }
        control.suspendingSession = nil
        if wasSuspended {
            for client in clientSessions.values { client.resumeReads() }
            for server in serverConnections.values { server.resumeReads() }
        }
        for pool in pools(of: database) { pool.resumeAfterPause() }
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
        for pool in pools(of: database) { reconnect(pool: pool) }
    }

    func reconnect(pool: Pool) {
        for server in serverConnections.values where server.pool === pool {
            server.closeNeeded = true
        }
        pool.reconnectServers()
    }

    /// Drops every client and server of the scope; the scope stays paused until RESUME.
    func kill(database: String?) {
        if let database { control.pausedDatabases.insert(database) } else {
            for pool in allPools { control.pausedDatabases.insert(pool.key.database) }
        }
        let forcedOff = PoolerError("admin forced disconnect")
        for client in clientSessions.values where database == nil || client.pool?.key.database == database {
            client.kill(forcedOff)
        }
        for server in serverConnections.values where database == nil || server.pool.key.database == database {
            server.close(reason: "admin forced disconnect")
        }
    }

    /// At exit: clients and console sessions are told the pooler is shutting down, servers get Terminate.
    func closeAllConnections() {
        for client in clientSessions.values { client.kill(.shuttingDown) }
        for session in adminSessions.values { session.closeWithFatal(.shuttingDown) }
        for server in serverConnections.values { server.terminate(reason: "pooler is shutting down") }
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
                let closing = serverConnections.values.contains {
                    $0.closeNeeded && (database == nil || $0.pool.key.database == database)
                }
                if closing { stillWaiting.append(entry) } else { entry.session.finishDeferred(tag: "WAIT_CLOSE") }
            }
        }
        control.pendingReplies = stillWaiting
    }

    func serverCount(of database: String?) -> Int {
        pools(of: database).reduce(0) { $0 + $1.serverCount }
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
        control.newerStats = Dictionary(uniqueKeysWithValues: allPools.map { ($0.key, $0.stats) })
        guard settings.logStats else { return }
        let average = averages(of: Array(allPools))
        logger.info(
            "stats: \(average.transactions) xacts/s, \(average.queries) queries/s, \(average.clientParses) client parses/s, \(average.serverParses) server parses/s, \(average.binds) binds/s, in \(average.bytesReceived) B/s, out \(average.bytesSent) B/s, xact \(average.transactionMicroseconds) us, query \(average.queryMicroseconds) us, wait \(average.waitMicroseconds) us"
        )
    }

    /// PgBouncer's averages for `pools` at this moment: from the snapshot before last to now.
    func averages(of pools: [Pool]) -> PoolStatistics {
        let now = pools.reduce(PoolStatistics()) { $0 + $1.stats }
        let earlier = pools.reduce(PoolStatistics()) { $0 + (control.olderStats[$1.key] ?? PoolStatistics()) }
        let seconds = Double((NIODeadline.now() - control.olderStamp).nanoseconds) / 1e9
        return now.averages(since: earlier, seconds: seconds)
    }
}
