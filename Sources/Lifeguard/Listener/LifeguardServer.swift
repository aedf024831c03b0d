import Glibc
import LifeguardCore
import LifeguardEngine
import Logging
import NIOCore

/// The running daemon: the engine loops (`threads`), their pool shards, the TCP and Unix-socket listeners
/// every loop accepts from, and the process-level controls (reload, shutdown modes, signals).
public final class LifeguardServer: DaemonControl {
    public private(set) var configuration: Configuration
    private let configurationPath: String
    private let group: ShardGroup
    /// The first loop, on the main thread: it takes the signals and runs the drain check.
    private var loop: EngineLoop { group.first.loop }
    /// Per listening socket, one listener per loop; the first of each owns the socket.
    private var tcpListeners: [[Listener]] = []
    private var unixListeners: [Listener] = []
    private let logger: Logger
    private var unixSocketPath: String?
    private let reopenLog: () -> Void
    private var drainTimer: EngineLoop.TimerID?
    /// Set by the first SIGTERM / SIGINT, so that the second one exits at once.
    private var drainMode: ShutdownMode?
    /// Tells systemd (`Type=notify`) when Lifeguard is ready, reloading and stopping.
    private let systemd = SystemdNotifier()
    private var toldStopping = false

    /// - Parameters:
    ///   - reopenLog: reopens the log file (SIGHUP and RELOAD, for log rotation).
    public init(
        configurationPath: String, configuration: Configuration, authFiles: AuthFiles, logger: Logger,
        reopenLog: @escaping () -> Void
    ) throws {
        self.configurationPath = configurationPath
        self.configuration = configuration
        self.logger = logger
        self.reopenLog = reopenLog
        let threads = configuration.settings.threads ?? max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        self.group = ShardGroup(
            loops: try LoopGroup(count: threads), configuration: configuration, authFiles: authFiles, logger: logger)
        group.control.daemon = self
    }

    /// The number of engine threads.
    public var threadCount: Int { group.shards.count }

    /// Binds every listener and starts taking `signals` (blocked in every thread by the caller); throws
    /// (with the address in the message) when a listener cannot be bound.
    public func start(signals: [Int32]) throws {
        let settings = configuration.settings
        try loop.handleSignals(signals) { [unowned self] number in
            group.acrossShards(from: group.first) { handleSignal(number) }
        }
        group.start()
        let backlog = Int32(clamping: settings.listenBacklog)

        for address in settings.listenAddresses {
            let hosts = address == "*" ? ["0.0.0.0", "::"] : [address]
            for host in hosts {
                do {
                    var options = TCPTuning.listenerOptions(settings)
                    if settings.soReuseport { options.append((SOL_SOCKET, SO_REUSEPORT, 1)) }
                    let socketAddress = try SocketAddress.makeAddressResolvingHost(host, port: settings.listenPort)
                    tcpListeners.append(try listenOnEveryLoop(socketAddress, backlog: backlog, options: options))
                    logger.info("listening on \(host):\(settings.listenPort)")
                } catch where address == "*" && host == "::" {
                    // IPv6 may be missing, or "::" may already cover IPv4: 0.0.0.0 is enough then.
                    continue
                } catch {
                    throw StartupError("cannot listen on \(host):\(settings.listenPort): \(error)")
                }
            }
        }

        if !settings.unixSocketDir.isEmpty {
            let path = "\(settings.unixSocketDir)/.s.PGSQL.\(settings.listenPort)"
            unlink(path)  // a stale socket from a previous run; PgBouncer removes it too
            do {
                unixListeners = try listenOnEveryLoop(
                    try SocketAddress(unixDomainSocketPath: path), backlog: backlog, options: [])
                chmod(path, mode_t(settings.unixSocketMode))
                unixSocketPath = path
                logger.info("listening on unix:\(path)")
            } catch {
                throw StartupError("cannot listen on unix:\(path): \(error)")
            }
        }
        if tcpListeners.isEmpty && unixListeners.isEmpty {
            throw StartupError("nothing to listen on: set listen_addr or unix_socket_dir")
        }
    }

    /// One listening socket, watched by every loop; each accepts into its own shard.
    private func listenOnEveryLoop(_ address: SocketAddress, backlog: Int32, options: [SocketOptionSetting])
        throws -> [Listener]
    {
        let shards = group.shards
        let accept = { (shard: PoolShard) in
            { (connection: Connection) in ClientSession(connection: connection, shard: shard).start() }
        }
        let first = try Listener.listen(
            on: address, backlog: backlog, listenerOptions: options, loop: shards[0].loop, shared: shards.count > 1,
            onAccept: accept(shards[0]))
        var listeners = [first]
        do {
            for shard in shards.dropFirst() {
                listeners.append(try first.alsoWatch(on: shard.loop, onAccept: accept(shard)))
            }
        } catch {
            close(listeners)
            throw error
        }
        return listeners
    }

    /// Closes one socket's listeners: the ones that only watch it first, then its owner.
    private func close(_ listeners: [Listener]) {
        for listener in listeners.reversed() { listener.close() }
    }

    /// Serves until a signal, SHUTDOWN or a finished drain asks the daemon to exit; the other loops run on
    /// threads of their own meanwhile.
    public func run() {
        group.loops.startThreads()
        systemd.ready()
        loop.run()
        group.loops.stopThreads()
    }

    /// STOPPING=1, once: at the start of a drain or of an immediate exit.
    private func tellSystemdStopping() {
        guard !toldStopping else { return }
        toldStopping = true
        systemd.stopping()
    }

    private func requestExit() {
        loop.stop()
    }

    /// Closes the listeners and says goodbye to every connection (Terminate to servers). After `run`, with
    /// the other threads stopped, so this thread may touch every loop.
    public func shutdown() {
        tellSystemdStopping()
        if let drainTimer { loop.cancel(drainTimer) }
        drainTimer = nil
        for listeners in tcpListeners + [unixListeners] { close(listeners) }
        tcpListeners = []
        unixListeners = []
        group.stop()
        group.closeAllConnections()
        // The goodbyes are queued writes and deferred close notifications: one more turn sends them.
        for loop in group.loops.loops { loop.runOnce(maxWaitMilliseconds: 0) }
        if let unixSocketPath { unlink(unixSocketPath) }
    }

    // MARK: Signals

    /// PgBouncer's signals: HUP reload, TERM wait for clients, INT wait for servers (a second TERM or INT
    /// exits at once), QUIT exit, USR1 pause, USR2 resume. Runs on the first loop (the signalfd is one of
    /// its descriptors), with the others parked.
    private func handleSignal(_ signalNumber: Int32) {
        switch signalNumber {
        case SIGHUP:
            logger.info("got SIGHUP, re-reading config")
            _ = reload()
        case SIGTERM, SIGINT:
            if drainMode != nil {
                logger.info("got signal \(signalNumber) again, exiting now")
                shutdown(.immediate)
            } else {
                logger.info(
                    signalNumber == SIGTERM
                        ? "got SIGTERM, shutting down, waiting for all clients to disconnect"
                        : "got SIGINT, shutting down, waiting for all servers connections to be released")
                shutdown(signalNumber == SIGTERM ? .waitForClients : .waitForServers)
            }
        case SIGQUIT:
            logger.info("got SIGQUIT, fast exit")
            shutdown(.immediate)
        case SIGUSR1:
            logger.info("got SIGUSR1, pausing all activity")
            group.pause(database: nil)
        case SIGUSR2:
            if group.isShuttingDown {
                logger.info("got SIGUSR2 while shutting down, ignoring")
            } else {
                logger.info("got SIGUSR2, continuing")
                if group.control.pauseMode != .running { group.resume(database: nil) }
            }
        default:
            break
        }
    }

    // MARK: DaemonControl (with every other loop parked)

    func reload() -> Bool {
        systemd.reloading()
        defer { systemd.ready() }
        reopenLog()
        do {
            let newConfiguration = try Configuration.load(path: configurationPath)
            let authFiles = try AuthFiles.load(newConfiguration.settings) { logger.warning("\($0)") }
            do {
                try PoolerTLS.check(newConfiguration.settings)
            } catch {
                logger.error("TLS setup failed: \(error)")
                throw error
            }
            for warning in newConfiguration.warnings { logger.warning("\(warning)") }
            configuration = newConfiguration
            for shard in group.shards { shard.reload(configuration: newConfiguration, authFiles: authFiles) }
            logger.info("configuration reloaded from \(configurationPath)")
            return true
        } catch {
            logger.error("RELOAD failed, keeping the running configuration: \(error)")
            return false
        }
    }

    func shutdown(_ mode: ShutdownMode) {
        tellSystemdStopping()
        switch mode {
        case .immediate:
            requestExit()
            return
        case .waitForClients:
            group.control.draining = .waitForClients
        case .waitForServers:
            group.control.draining = .waitForServers
            group.pause(database: nil)
            for client in group.clientSessions where client.isWaitingForServer {
                client.kill(.serverShuttingDown)
            }
        }
        drainMode = mode
        // Only the console stays reachable, over the Unix socket (as in PgBouncer 1.25).
        for listeners in tcpListeners { close(listeners) }
        tcpListeners = []
        if let drainTimer { loop.cancel(drainTimer) }
        drainTimer = loop.scheduleRepeating(every: 0.1) { [weak self] in self?.checkDrained() }
        exitIfDrained()
    }

    private func checkDrained() {
        group.acrossShards(from: group.first) { exitIfDrained() }
    }

    private func exitIfDrained() {
        let drained: Bool
        switch drainMode {
        case .waitForClients: drained = !group.clientSessions.contains(where: \.isLoggedIn)
        case .waitForServers: drained = !group.serverConnections.contains(where: \.isLinked)
        case .immediate, nil: drained = false
        }
        if drained {
            if let drainTimer { loop.cancel(drainTimer) }
            drainTimer = nil
            requestExit()
        }
    }
}

/// The TCP keys of `[pgbouncer]` as socket options. Set on the listening socket, they are inherited by every
/// accepted one; the server side sets the same keepalive and timeout options on each connection.
enum TCPTuning {
    static func connectionOptions(_ settings: Settings) -> [SocketOptionSetting] {
        var options: [SocketOptionSetting] = [(SOL_SOCKET, SO_KEEPALIVE, settings.tcpKeepalive ? 1 : 0)]
        if settings.tcpKeepalive {
            if settings.tcpKeepCount > 0 { options.append((Int32(IPPROTO_TCP), TCP_KEEPCNT, settings.tcpKeepCount)) }
            if settings.tcpKeepIdle > 0 { options.append((Int32(IPPROTO_TCP), TCP_KEEPIDLE, settings.tcpKeepIdle)) }
            if settings.tcpKeepInterval > 0 {
                options.append((Int32(IPPROTO_TCP), TCP_KEEPINTVL, settings.tcpKeepInterval))
            }
        }
        if settings.tcpUserTimeout > 0 {
            options.append((Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, settings.tcpUserTimeout))
        }
        if settings.tcpSocketBuffer > 0 {
            options.append((SOL_SOCKET, SO_SNDBUF, settings.tcpSocketBuffer))
            options.append((SOL_SOCKET, SO_RCVBUF, settings.tcpSocketBuffer))
        }
        return options
    }

    static func listenerOptions(_ settings: Settings) -> [SocketOptionSetting] {
        var options = connectionOptions(settings)
        // PgBouncer hard-codes 45 seconds: accept() only once the client has sent its first packet.
        if settings.tcpDeferAccept > 0 { options.append((Int32(IPPROTO_TCP), TCP_DEFER_ACCEPT, 45)) }
        return options
    }
}

public struct StartupError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
