import Glibc
import LifeguardCore
import NIOCore
import PostgresWire

/// Runs one admin-console statement for a session and writes PgBouncer's reply (without the final
/// ReadyForQuery, which the session adds).
struct AdminConsole {
    unowned let shard: PoolShard
    unowned let session: AdminSession
    /// Every shard; the console runs with the other loops parked, so it reads and acts on all of them.
    var group: ShardGroup { shard.group }

    enum Outcome {
        case done
        /// The CommandComplete comes later (PAUSE, WAIT_CLOSE).
        case deferred(DeferredCommand)
        /// SHUTDOWN: no reply at all.
        case exit
    }


    /// Parameters the console pretends to have so that drivers can connect (PgBouncer's fake list).
    static let fakeParameters: [String: String] = [
        "client_encoding": "UTF-8", "default_transaction_isolation": "read committed",
        "standard_conforming_strings": "on", "datestyle": "ISO", "timezone": "GMT",
    ]

    func execute(_ sql: String, into reply: inout ByteBuffer) -> Outcome {
        do {
            guard let command = AdminCommand.parse(sql) else { throw invalid(sql) }
            switch command {
            case .show(let subject):
                try show(subject, query: sql, into: &reply)
                return .done
            case .set(let key, let value):
                try set(key: key, value: value, into: &reply)
                return .done
            case .control(let verb, let argument):
                return try control(verb, argument: argument, query: sql, into: &reply)
            }
        } catch let error as PoolerError {
            reply.writeErrorResponse(severity: "ERROR", code: error.sqlState, message: error.message)
            if shard.settings.logPoolerErrors { shard.logger.warning("pooler error: \(error.message)") }
            return .done
        } catch {
            reply.writeErrorResponse(severity: "ERROR", code: "08P01", message: "\(error)")
            return .done
        }
    }

    private func invalid(_ sql: String) -> PoolerError {
        PoolerError("invalid command '\(sql)', use SHOW HELP;")
    }

    private func requireAdmin() throws(PoolerError) {
        guard session.role == .admin else { throw AdminAccess.adminAccessNeeded }
    }

    // MARK: SET

    private func set(key: String, value: String, into reply: inout ByteBuffer) throws(PoolerError) {
        if Self.fakeParameters[key] != nil {
            reply.writeErrorResponse(severity: "NOTICE", code: "00000", message: "SET ignored", notice: true)
            reply.writeCommandComplete("SET")
            return
        }
        try requireAdmin()
        for other in group.shards {
            guard other.applyRuntimeSetting(key: key, value: value) else { throw PoolerError("SET failed") }
        }
        reply.writeCommandComplete("SET \(key)=\(value)")
    }

    // MARK: Control commands

    private func control(_ verb: String, argument: String?, query: String, into reply: inout ByteBuffer) throws(PoolerError)
        -> Outcome
    {
        let known = ["PAUSE", "RESUME", "SUSPEND", "DISABLE", "ENABLE", "RECONNECT", "KILL", "KILL_CLIENT",
                     "WAIT_CLOSE", "RELOAD", "SHUTDOWN"]
        guard known.contains(verb) else { throw invalid(query) }
        if ["SUSPEND", "RELOAD"].contains(verb), argument != nil { throw invalid(query) }
        if verb == "SHUTDOWN", let argument,
            !["WAIT_FOR_SERVERS", "WAIT_FOR_CLIENTS"].contains(argument.uppercased())
        {
            throw invalid(query)
        }
        try requireAdmin()
        let control = shard.control

        switch verb {
        case "PAUSE":
            guard control.pauseMode == .running else { throw PoolerError("already suspended/paused") }
            if let database = argument { try checkDatabase(database, action: "pause") }
            group.pause(database: argument)
            if group.serverCount(of: argument) == 0 {
                reply.writeCommandComplete("PAUSE")
                return .done
            }
            control.pendingReplies.append((session, .pause(database: argument)))
            return .deferred(.pause(database: argument))
        case "RESUME":
            if let database = argument {
                guard shard.configuration.database(named: database) != nil || database == AdminAccess.databaseName
                else { throw .noSuchDatabase(database) }
                guard control.pausedDatabases.contains(database) else {
                    throw PoolerError("database \(database) is not paused")
                }
            } else {
                guard !shard.isShuttingDown else { throw .shuttingDown }
                guard control.pauseMode != .running else { throw PoolerError("pooler is not paused/suspended") }
            }
            group.resume(database: argument)
            reply.writeCommandComplete("RESUME")
        case "SUSPEND":
            guard control.pauseMode == .running else { throw PoolerError("already suspended/paused") }
            guard control.pausedDatabases.isEmpty else { throw PoolerError("cannot suspend with paused databases") }
            group.pause(database: nil)
            control.pauseMode = .suspended
            control.suspendingSession = session
            reply.writeCommandComplete("SUSPEND")
        case "DISABLE", "ENABLE":
            guard let database = argument else { throw PoolerError("a database is required") }
            try checkDatabase(database, action: verb.lowercased())
            if verb == "DISABLE" {
                control.disabledDatabases.insert(database)
            } else {
                control.disabledDatabases.remove(database)
            }
            reply.writeCommandComplete(verb)
        case "RECONNECT":
            if let database = argument { try checkDatabase(database, action: "reconnect") }
            group.reconnect(database: argument)
            reply.writeCommandComplete("RECONNECT")
        case "KILL":
            guard control.pauseMode == .running else { throw PoolerError("already suspended/paused") }
            if let database = argument { try checkDatabase(database, action: "kill") }
            group.kill(database: argument)
            reply.writeCommandComplete("KILL")
        case "KILL_CLIENT":
            guard let argument, let id = Int(argument) else { throw PoolerError("invalid client pointer supplied") }
            if let client = group.clientSessions.first(where: { $0.id == id && $0.isLoggedIn }) {
                client.kill(PoolerError("admin forced disconnect"))
            } else if let console = group.adminSessions.first(where: { $0.id == id }) {
                console.closeWithFatal(PoolerError("admin forced disconnect"))
            } else {
                throw PoolerError("client not found")
            }
            reply.writeCommandComplete("KILL_CLIENT")
        case "WAIT_CLOSE":
            if let database = argument { try checkDatabase(database, action: "wait in") }
            let closing = group.serverConnections.contains {
                $0.closeNeeded && (argument == nil || $0.pool.key.database == argument)
            }
            guard closing else {
                reply.writeCommandComplete("WAIT_CLOSE")
                return .done
            }
            control.pendingReplies.append((session, .waitClose(database: argument)))
            return .deferred(.waitClose(database: argument))
        case "RELOAD":
            guard control.daemon?.reload() == true else {
                throw PoolerError("RELOAD failed, see logs for additional details", sqlState: "F0000")
            }
            reply.writeCommandComplete("RELOAD")
        case "SHUTDOWN":
            switch argument?.uppercased() {
            case "WAIT_FOR_SERVERS":
                control.daemon?.shutdown(.waitForServers)
            case "WAIT_FOR_CLIENTS":
                control.daemon?.shutdown(.waitForClients)
            default:
                control.daemon?.shutdown(.immediate)
                return .exit
            }
            reply.writeCommandComplete("SHUTDOWN")
        default:
            throw invalid(query)
        }
        return .done
    }

    /// `no such database: X` for unknown names, and PgBouncer's refusal to act on the console itself.
    private func checkDatabase(_ database: String, action: String) throws(PoolerError) {
        if database == AdminAccess.databaseName { throw PoolerError("cannot \(action) admin db: \(database)") }
        guard shard.configuration.database(named: database) != nil else { throw .noSuchDatabase(database) }
    }
}
