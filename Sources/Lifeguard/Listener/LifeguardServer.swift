import Glibc
import LifeguardCore
import LifeguardEngine
import Logging
import NIOCore

/// The running daemon: the event loop, its pool shard and the TCP and Unix-socket listeners, and the
/// process-level controls (reload, shutdown modes, signals).
public final class LifeguardServer: DaemonControl {
    public private(set) var configuration: Configuration
    private let configurationPath: String
    private let loop: EngineLoop
    private let shard: PoolShard
    private var tcpListeners: [Listener] = []
    private var unixListener: Listener?
    private let logger: Logger
    private var unixSocketPath: String?
    private let reopenLog: () -> Void
    private var drainTimer: EngineLoop.TimerID?
    /// Set by the first SIGTERM / SIGINT, so that the second one exits at once.
    private var drainMode: ShutdownMode?

    /// - Parameters:
    ///   - reopenLog: reopens the log file (SIGHUP and RELOAD, for log rotation).
    public init(
        configurationPath: String, configuration: Configuration, userList: UserList, logger: Logger,
        reopenLog: @escaping () -> Void
    ) throws {
        self.configurationPath = configurationPath
        self.configuration = configuration
        self.logger = logger
        self.reopenLog = reopenLog
        // One loop for now; the shard is shaped so that each loop can later own its own.
        self.loop = try EngineLoop()
        self.shard = PoolShard(
            loop: loop, shared: SharedState(), configuration: configuration, userList: userList, logger: logger)
        shard.control.daemon = self
    }

    /// Binds every listener and starts taking `signals` (blocked in every thread by the caller); throws
    /// (with the address in the message) when a listener cannot be bound.
    public func start(signals: [Int32]) throws {
        let settings = configuration.settings
        try loop.handleSignals(signals) { [unowned self] in self.handleSignal($0) }
        shard.startJanitor()
        let shard = self.shard
        let accept = { (connection: Connection) in ClientSession(connection: connection, shard: shard).start() }
        let backlog = Int32(clamping: settings.listenBacklog)

        for address in settings.listenAddresses {
            let hosts = address == "*" ? ["0.0.0.0", "::"] : [address]
            for host in hosts {
                do {
                    var options = TCPTuning.listenerOptions(settings)
                    if settings.soReuseport { options.append((SOL_SOCKET, SO_REUSEPORT, 1)) }
                    let socketAddress = try SocketAddress.makeAddressResolvingHost(host, port: settings.listenPort)
                    tcpListeners.append(
                        try Listener.listen(
                            on: socketAddress, backlog: backlog, listenerOptions: options, loop: loop, onAccept: accept))
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
                unixListener = try Listener.listen(
                    on: try SocketAddress(unixDomainSocketPath: path), backlog: backlog, listenerOptions: [],
                    loop: loop, onAccept: accept)
                chmod(path, mode_t(settings.unixSocketMode))
                unixSocketPath = path
                logger.info("listening on unix:\(path)")
            } catch {
                throw StartupError("cannot listen on unix:\(path): \(error)")
            }
        }
        if tcpListeners.isEmpty && unixListener == nil {
            throw StartupError("nothing to listen on: set listen_addr or unix_socket_dir")
        }
    }

    /// Serves until a signal, SHUTDOWN or a finished drain asks the daemon to exit.
    public func run() {
        loop.run()
    }

    private func requestExit() {
        loop.stop()
    }

    /// Closes the listeners and says goodbye to every connection (Terminate to servers).
    public func shutdown() {
        for listener in tcpListeners + [unixListener].compactMap({ $0 }) { listener.close() }
        tcpListeners = []
        unixListener = nil
        shard.stop()
        shard.closeAllConnections()
        // The goodbyes are queued writes and deferred close notifications: one more turn sends them.
        loop.runOnce(maxWaitMilliseconds: 0)
        if let unixSocketPath { unlink(unixSocketPath) }
    }

    // MARK: Signals

    /// PgBouncer's signals: HUP reload, TERM wait for clients, INT wait for servers (a second TERM or INT
    /// exits at once), QUIT exit, USR1 pause, USR2 resume. Runs on the loop (the signalfd is one of its
    /// descriptors).
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
            shard.pause(database: nil)
        case SIGUSR2:
            logger.info("got SIGUSR2, continuing")
            if !shard.isShuttingDown, shard.control.pauseMode != .running { shard.resume(database: nil) }
        default:
            break
        }
    }

    // MARK: DaemonControl (on the event loop)

    func reload() -> Bool {
        reopenLog()
        do {
            let newConfiguration = try Configuration.load(path: configurationPath)
            let userList = try newConfiguration.settings.authFile.map { try UserList.load(path: $0) } ?? UserList(secrets: [:])
            for warning in newConfiguration.warnings { logger.warning("\(warning)") }
            configuration = newConfiguration
            shard.reload(configuration: newConfiguration, userList: userList)
            logger.info("configuration reloaded from \(configurationPath)")
            return true
        } catch {
            logger.error("RELOAD failed, keeping the running configuration: \(error)")
            return false
        }
    }

    func shutdown(_ mode: ShutdownMode) {
        switch mode {
        case .immediate:
            requestExit()
            return
        case .waitForClients:
            shard.control.draining = .waitForClients
        case .waitForServers:
            shard.control.draining = .waitForServers
            shard.pause(database: nil)
            for client in shard.clientSessions.values where client.isWaitingForServer {
                client.kill(PoolerError("server shutting down"))
            }
        }
        drainMode = mode
        // Only the console stays reachable, over the Unix socket (as in PgBouncer 1.25).
        for listener in tcpListeners { listener.close() }
        tcpListeners = []
        if let drainTimer { loop.cancel(drainTimer) }
        drainTimer = loop.scheduleRepeating(every: 0.1) { [weak self] in self?.exitIfDrained() }
        exitIfDrained()
    }

    private func exitIfDrained() {
        let drained: Bool
        switch drainMode {
        case .waitForClients: drained = !shard.clientSessions.values.contains(where: \.isLoggedIn)
        case .waitForServers: drained = !shard.serverConnections.values.contains(where: \.isLinked)
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
