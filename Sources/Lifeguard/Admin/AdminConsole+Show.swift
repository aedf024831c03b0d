import CLinuxShims
import Glibc
import LifeguardCore
import NIOCore
import PostgresWire

/// The SHOW commands, with PgBouncer's column names, order and types (its type-letter strings are kept
/// verbatim so they can be compared with PgBouncer's source).
extension AdminConsole {
    func show(_ subject: String, query: String, into reply: inout ByteBuffer) throws(PoolerError) {
        if let value = Self.fakeParameters[subject] {
            var table = ResultSet(names: [subject], types: "s")
            table.append([value])
            table.write(into: &reply, tag: "SHOW")
            return
        }
        let table: ResultSet
        switch subject {
        case "help":
            writeHelp(into: &reply)
            return
        case "version":
            table = single("version", LifeguardVersion.line)
        case "config": table = config()
        case "databases": table = databases()
        case "pools": table = pools()
        case "clients": table = connections(clients: true, servers: false, socketColumns: false)
        case "servers": table = connections(clients: false, servers: true, socketColumns: false)
        case "sockets": table = connections(clients: true, servers: true, socketColumns: true)
        case "active_sockets":
            // Lifeguard keeps no per-socket buffers between reads, so no socket has data waiting in one.
            table = ResultSet(names: Self.connectionColumns + Self.socketColumns, types: Self.socketTypes)
        case "users": table = users()
        case "stats": table = stats()
        case "stats_totals": table = statsTotals()
        case "stats_averages": table = statsAverages()
        case "totals": table = totals()
        case "lists": table = lists()
        case "state": table = state()
        case "mem": table = memory()
        case "dns_hosts": table = ResultSet(names: ["hostname", "ttl", "addrs"], types: "sqs")
        case "dns_zones": table = ResultSet(names: ["zonename", "serial", "count"], types: "sqi")
        case "peers": table = peers()
        case "peer_pools":
            table = ResultSet(
                names: ["peer_id", "cl_active_cancel_req", "cl_waiting_cancel_req", "sv_active_cancel", "sv_login"],
                types: "iiiii")
        case "fds":
            guard session.role == .admin else { throw AdminAccess.adminAccessNeeded }
            // Online restart by fd passing is not supported: no descriptors are offered.
            table = ResultSet(
                names: ["fd", "task", "user", "database", "addr", "port", "cancel", "link", "client_encoding",
                        "std_strings", "datestyle", "timezone", "password", "scram_client_key", "scram_server_key"],
                types: "issssiqisssssbb")
        default:
            throw PoolerError("invalid command '\(query)', use SHOW HELP;")
        }
        table.write(into: &reply, tag: "SHOW")
    }

    private func single(_ column: String, _ value: String) -> ResultSet {
        var table = ResultSet(names: [column], types: "s")
        table.append([value])
        return table
    }

    private func writeHelp(into reply: inout ByteBuffer) {
        let lines = [
            "SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION", "SHOW PEERS|PEER_POOLS",
            "SHOW FDS|SOCKETS|ACTIVE_SOCKETS|LISTS|MEM|STATE", "SHOW DNS_HOSTS|DNS_ZONES",
            "SHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS", "SET key = arg", "RELOAD", "PAUSE [<db>]",
            "RESUME [<db>]", "DISABLE <db>", "ENABLE <db>", "RECONNECT [<db>]", "KILL [<db>]",
            "KILL_CLIENT <client_id>", "SUSPEND", "SHUTDOWN", "SHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS",
            "WAIT_CLOSE [<db>]",
        ]
        let detail = "\n" + lines.map { "\t" + $0 }.joined(separator: "\n")
        reply.writeMessage(BackendID.noticeResponse) {
            for (code, value) in [("S", "NOTICE"), ("C", "00000"), ("M", "Console usage"), ("D", detail)] {
                $0.writeInteger(UInt8(ascii: Unicode.Scalar(code)!))
                $0.writeNullTerminatedString(value)
            }
            $0.writeInteger(UInt8(0))
        }
        reply.writeCommandComplete("SHOW")
    }

    // MARK: Configuration

    private func config() -> ResultSet {
        var table = ResultSet(names: ["key", "value", "default", "changeable"], types: "ssss")
        let raw = shard.configuration.rawSettings
        for key in Settings.knownKeys {
            let value = raw[key.name] ?? key.defaultValue
            table.append([key.name, value, key.defaultValue, key.reloadable ? "yes" : "no"])
        }
        return table
    }

    // MARK: Databases, pools, users

    /// Configured databases and those created from the `*` entry, plus the console's own.
    private var databaseNames: [String] {
        var names = Set(shard.configuration.databases.keys)
        for pool in group.pools { names.insert(pool.key.database) }
        names.insert(AdminAccess.databaseName)
        return names.sorted()
    }

    private func databases() -> ResultSet {
        var table = ResultSet(
            names: ["name", "host", "port", "database", "force_user", "pool_size", "min_pool_size",
                    "reserve_pool_size", "server_lifetime", "pool_mode", "load_balance_hosts", "max_connections",
                    "current_connections", "max_client_connections", "current_client_connections", "paused",
                    "disabled"],
            types: "ssissiiiissiiiiii")
        let settings = shard.settings
        let lifetime = shard.configuration.rawSettings["server_lifetime"] ?? "3600"
        for name in databaseNames {
            let control = shard.control
            let paused = control.pausedDatabases.contains(name) ? "1" : "0"
            let disabled = control.disabledDatabases.contains(name) ? "1" : "0"
            if name == AdminAccess.databaseName {
                table.append([name, nil, "\(settings.listenPort)", name, name, "2", "0", "0", lifetime, "statement",
                              nil, "0", "0", "\(settings.maxDBClientConnections)",
                              "\(shard.shared.clientCount(ofDatabase: name))", paused, disabled])
                continue
            }
            guard let database = shard.configuration.database(named: name) else { continue }
            let pools = group.pools(of: name)
            table.append([
                name, database.host, "\(database.port)", database.dbname ?? name, database.user,
                "\(database.poolSize ?? settings.defaultPoolSize)", "\(database.minPoolSize ?? settings.minPoolSize)",
                "\(database.reservePoolSize ?? settings.reservePoolSize)", lifetime, database.poolMode?.rawValue,
                database.loadBalanceHosts ? "round-robin" : "disable",
                "\(database.maxDBConnections ?? settings.maxDBConnections)",
                "\(pools.reduce(0) { $0 + $1.serverCount })",
                "\(database.maxDBClientConnections ?? settings.maxDBClientConnections)",
                "\(shard.shared.clientCount(ofDatabase: name))", paused, disabled,
            ])
        }
        return table
    }

    private func pools() -> ResultSet {
        var table = ResultSet(
            names: ["database", "user", "cl_active", "cl_waiting", "cl_active_cancel_req", "cl_waiting_cancel_req",
                    "sv_active", "sv_active_cancel", "sv_being_canceled", "sv_idle", "sv_used", "sv_tested",
                    "sv_login", "maxwait", "maxwait_us", "pool_mode", "load_balance_hosts"],
            types: "ssiiiiiiiiiiiiiss")
        var clientStates: [PoolKey: [String: Int]] = [:]
        for client in group.clientSessions {
            guard let pool = client.pool, let state = client.listState else { continue }
            clientStates[pool.key, default: [:]][state, default: 0] += 1
        }
        var serverStates: [PoolKey: [String: Int]] = [:]
        for server in group.serverConnections {
            guard let state = server.listState else { continue }
            serverStates[server.pool.key, default: [:]][state, default: 0] += 1
        }
        var rows: [[String?]] = []
        for pool in group.pools {
            let clients = clientStates[pool.key] ?? [:]
            let servers = serverStates[pool.key] ?? [:]
            let wait = pool.longestWaitMicroseconds
            // PgBouncer's cl_active holds both linked and idle logged-in clients.
            let active = (clients["active"] ?? 0) + (clients["idle"] ?? 0)
            rows.append([
                pool.key.database, pool.key.user, "\(active)", "\(clients["waiting"] ?? 0)", "0", "0",
                "\(servers["active"] ?? 0)", "0", "\(servers["being_canceled"] ?? 0)", "\(servers["idle"] ?? 0)",
                "\(servers["used"] ?? 0)",
                "\(servers["tested"] ?? 0)",
                "\(servers["new"] ?? 0)", "\(wait / 1_000_000)", "\(wait % 1_000_000)", pool.mode.rawValue, nil,
            ])
        }
        rows.append([
            AdminAccess.databaseName, AdminAccess.databaseName, "\(group.adminSessions.count)", "0", "0", "0", "0",
            "0", "0", "0", "0", "0", "0", "0", "0", "statement", nil,
        ])
        for row in rows.sorted(by: { ($0[0]!, $0[1]!) < ($1[0]!, $1[1]!) }) { table.append(row) }
        return table
    }

    private func users() -> ResultSet {
        var table = ResultSet(
            names: ["name", "pool_size", "reserve_pool_size", "pool_mode", "max_user_connections",
                    "current_connections", "max_user_client_connections", "current_client_connections"],
            types: "ssssiiii")
        var names = Set(shard.configuration.users.keys).union(shard.userNames)
        for pool in group.pools { names.insert(pool.key.user) }
        names.insert(AdminAccess.databaseName)
        let settings = shard.settings
        for name in names.sorted() {
            let definition = shard.configuration.users[name]
            table.append([
                name, definition?.poolSize.map { Self.padded($0) } ?? "",
                definition?.reservePoolSize.map { Self.padded($0) } ?? "", definition?.poolMode?.rawValue,
                "\(definition?.maxUserConnections ?? settings.maxUserConnections)",
                "\(shard.shared.serverCount(ofUser: name))",
                "\(definition?.maxUserClientConnections ?? settings.maxUserClientConnections)",
                "\(shard.shared.clientCount(ofUser: name))",
            ])
        }
        return table
    }

    /// PgBouncer prints user pool sizes with `%9d`.
    private static func padded(_ value: Int) -> String {
        let digits = String(value)
        return String(repeating: " ", count: max(0, 9 - digits.count)) + digits
    }

    // MARK: Clients, servers, sockets

    static let connectionColumns = [
        "type", "user", "database", "replication", "state", "addr", "port", "local_addr", "local_port",
        "connect_time", "request_time", "wait", "wait_us", "close_needed", "ptr", "link", "remote_pid", "tls",
        "application_name", "prepared_statements", "id",
    ]
    static let connectionTypes = "ssssssisiTTiiississii"
    static let socketColumns = ["recv_pos", "pkt_pos", "pkt_remain", "send_pos", "send_remain", "pkt_avail", "send_avail"]
    static let socketTypes = connectionTypes + "iiiiiii"

    private func connections(clients: Bool, servers: Bool, socketColumns: Bool) -> ResultSet {
        var table = ResultSet(
            names: Self.connectionColumns + (socketColumns ? Self.socketColumns : []),
            types: socketColumns ? Self.socketTypes : Self.connectionTypes)
        let extra = socketColumns ? Array(repeating: "0" as String?, count: Self.socketColumns.count) : []
        var rows: [(Int, [String?])] = []
        if clients {
            for client in group.clientSessions {
                guard let state = client.listState ?? (socketColumns ? "login" : nil),
                    let database = client.pool?.key.database ?? group.pools.first?.key.database
                else { continue }
                let shown = socketColumns ? "cl_" + (state == "idle" ? "active" : state) : state
                let wait = client.waitMicroseconds
                let (addr, port) = Self.describe(client.remoteAddress, listenPort: shard.settings.listenPort)
                let (localAddr, localPort) = Self.describe(client.localAddress, listenPort: shard.settings.listenPort)
                rows.append((client.id, [
                    "C", client.loginUser ?? "(nouser)", database, client.replication.rawValue,
                    shown, addr, port, localAddr, localPort, WallClock.format(client.connectTime),
                    WallClock.format(client.requestTime), "\(wait / 1_000_000)", "\(wait % 1_000_000)", "0",
                    pointerText(client), client.server.map(pointerText) ?? "", "0",
                    client.tlsSummary ?? "",
                    client.parameters["application_name"] ?? "", "\(client.statements.count)", "\(client.id)",
                ] + extra))
            }
            for console in group.adminSessions {
                let (addr, port) = Self.describe(console.peerAddress, listenPort: shard.settings.listenPort)
                let (localAddr, localPort) = Self.describe(console.localAddress, listenPort: shard.settings.listenPort)
                rows.append((console.id, [
                    "C", console.user, AdminAccess.databaseName, "none", socketColumns ? "cl_active" : "active",
                    addr, port, localAddr, localPort, WallClock.format(console.connectTime),
                    WallClock.format(console.requestTime), "0", "0", "0", pointerText(console), "", "0",
                    console.tlsSummary ?? "", "", "0",
                    "\(console.id)",
                ] + extra))
            }
        }
        if servers {
            for server in group.serverConnections {
                guard let state = server.listState else { continue }
                let (addr, port) = Self.describe(server.remoteAddress, listenPort: shard.settings.listenPort)
                let (localAddr, localPort) = Self.describe(server.localAddress, listenPort: shard.settings.listenPort)
                rows.append((server.id, [
                    "S", server.pool.key.user, server.pool.key.database, server.replication?.mode.rawValue ?? "none",
                    socketColumns ? "sv_" + (state == "new" ? "login" : state) : state, addr, port, localAddr,
                    localPort, WallClock.format(server.connectTime), WallClock.format(server.requestTime), "0", "0",
                    server.closeNeeded ? "1" : "0", pointerText(server), server.linkedClient.map(pointerText) ?? "",
                    "\(server.backendKey?.processID ?? 0)", server.tlsSummary ?? "",
                    server.parameters["application_name"] ?? "",
                    "\(server.preparedStatementCount)", "\(server.id)",
                ] + extra))
            }
        }
        for (_, row) in rows.sorted(by: { $0.0 < $1.0 }) { table.append(row) }
        return table
    }

    /// A connection's address as PgBouncer shows it: IP and port, or `unix` and the listen port.
    static func describe(_ address: SocketAddress?, listenPort: Int) -> (String?, String?) {
        guard let address else { return (nil, "0") }
        if let ip = address.ipAddress { return (ip, "\(address.port ?? 0)") }
        return ("unix", "\(listenPort)")
    }

    // MARK: Statistics

    private static let statsCounters: [(name: String, path: KeyPath<PoolStatistics, Int>)] = [
        ("server_assignment_count", \PoolStatistics.serverAssignments), ("xact_count", \PoolStatistics.transactions),
        ("query_count", \PoolStatistics.queries), ("received", \PoolStatistics.bytesReceived),
        ("sent", \PoolStatistics.bytesSent), ("xact_time", \PoolStatistics.transactionMicroseconds),
        ("query_time", \PoolStatistics.queryMicroseconds), ("wait_time", \PoolStatistics.waitMicroseconds),
        ("client_parse_count", \PoolStatistics.clientParses), ("server_parse_count", \PoolStatistics.serverParses),
        ("bind_count", \PoolStatistics.binds), ("client_login_count", \PoolStatistics.clientLogins),
    ]

    /// Databases that have pools, with their pools; the console's row counts its logins and commands.
    private var statsDatabases: [(name: String, pools: [PoolSummary])] {
        var byDatabase: [String: [PoolSummary]] = [AdminAccess.databaseName: [group.console]]
        for pool in group.pools { byDatabase[pool.key.database, default: []].append(pool) }
        return byDatabase.keys.sorted().map { ($0, byDatabase[$0]!) }
    }

    private func stats() -> ResultSet {
        let names = ["database"] + Self.statsCounters.map { "total_\($0.name)" }
            + Self.statsCounters.map { "avg_" + Self.averageName($0.name) }
        var table = ResultSet(names: names, types: "s" + String(repeating: "N", count: names.count - 1))
        for (name, pools) in statsDatabases {
            let totals = pools.reduce(PoolStatistics()) { $0 + $1.stats }
            let averages = group.averages(of: pools)
            table.append([name] + Self.statsCounters.map { "\(totals[keyPath: $0.path])" }
                + Self.statsCounters.map { "\(averages[keyPath: $0.path])" })
        }
        return table
    }

    /// PgBouncer's average column names: `avg_recv`, `avg_sent`, otherwise the counter's name.
    private static func averageName(_ counter: String) -> String {
        switch counter {
        case "received": return "recv"
        default: return counter
        }
    }

    private func statsTotals() -> ResultSet {
        let names = ["database"] + Self.statsCounters.map { Self.bytesName($0.name) }
        var table = ResultSet(names: names, types: "s" + String(repeating: "N", count: names.count - 1))
        for (name, pools) in statsDatabases {
            let totals = pools.reduce(PoolStatistics()) { $0 + $1.stats }
            table.append([name] + Self.statsCounters.map { "\(totals[keyPath: $0.path])" })
        }
        return table
    }

    private func statsAverages() -> ResultSet {
        // PgBouncer keeps `avg_` on the last four names only.
        let names = ["database"] + Self.statsCounters.enumerated().map { index, counter in
            index >= 8 ? "avg_" + counter.name : Self.bytesName(counter.name)
        }
        var table = ResultSet(names: names, types: "s" + String(repeating: "N", count: names.count - 1))
        for (name, pools) in statsDatabases {
            let averages = group.averages(of: pools)
            table.append([name] + Self.statsCounters.map { "\(averages[keyPath: $0.path])" })
        }
        return table
    }

    /// `bytes_received` / `bytes_sent` in STATS_TOTALS and STATS_AVERAGES.
    private static func bytesName(_ counter: String) -> String {
        counter == "received" || counter == "sent" ? "bytes_\(counter)" : counter
    }

    private func totals() -> ResultSet {
        var table = ResultSet(names: ["name", "value"], types: "sN")
        let pools = group.pools + [group.console]
        let totals = pools.reduce(PoolStatistics()) { $0 + $1.stats }
        let averages = group.averages(of: pools)
        let names = [
            "server_assignment_count", "xact_count", "query_count", "client_bytes", "server_bytes", "xact_time",
            "query_time", "wait_time", "ps_client_parse_count", "ps_server_parse_count", "ps_bind_count",
            "client_login_count",
        ]
        for (prefix, values) in [("total_", totals), ("avg_", averages)] {
            for (name, counter) in zip(names, Self.statsCounters) {
                table.append([prefix + name, "\(values[keyPath: counter.path])"])
            }
        }
        return table
    }

    // MARK: Process state

    private func peers() -> ResultSet {
        var table = ResultSet(names: ["peer_id", "host", "port", "pool_size"], types: "isii")
        for peer in shard.configuration.peers.values.sorted(by: { $0.id < $1.id }) {
            let poolSize = peer.poolSize ?? shard.settings.defaultPoolSize
            table.append(["\(peer.id)", peer.host ?? shard.settings.unixSocketDir, "\(peer.port)", "\(poolSize)"])
        }
        return table
    }

    private func lists() -> ResultSet {
        var table = ResultSet(names: ["list", "items"], types: "si")
        let loginClients = group.clientSessions.filter(\.isLoggingIn).count
        let usedClients = group.clientSessions.count + group.adminSessions.count
        for (name, count) in [
            ("databases", databaseNames.count), ("users", Set(group.pools.map(\.key.user)).union(shard.userNames).count + 1),
            ("peers", shard.configuration.peers.count), ("pools", group.pools.count + 1), ("peer_pools", 0), ("free_clients", 0),
            ("used_clients", usedClients), ("login_clients", loginClients), ("free_servers", 0),
            ("used_servers", group.serverConnections.count), ("dns_names", 0), ("dns_zones", 0), ("dns_queries", 0),
            ("dns_pending", 0),
        ] {
            table.append([name, "\(count)"])
        }
        return table
    }

    private func state() -> ResultSet {
        var table = ResultSet(names: ["key", "value"], types: "ss")
        let mode = shard.control.pauseMode
        table.append(["active", mode == .running ? "yes" : "no"])
        table.append(["paused", mode == .paused ? "yes" : "no"])
        table.append(["suspended", mode == .suspended ? "yes" : "no"])
        return table
    }

    /// Lifeguard's own objects under PgBouncer's slab columns: `size` is the real allocation size of one.
    private func memory() -> ResultSet {
        var table = ResultSet(names: ["name", "size", "used", "free", "memtotal"], types: "siiii")
        func row(_ name: String, _ objects: [AnyObject]) {
            let size = objects.first.map { Int(malloc_usable_size(Unmanaged.passUnretained($0).toOpaque())) } ?? 0
            table.append([name, "\(size)", "\(objects.count)", "0", "\(size * objects.count)"])
        }
        row("pool_cache", group.shards.flatMap { Array($0.allPools) })
        row("server_cache", Array(group.serverConnections))
        row("client_cache", Array(group.clientSessions) + Array(group.adminSessions))
        return table
    }
}
