import Glibc
import LifeguardCore
import Logging
import NIOCore
import NIOPosix

/// The running daemon: the event loop, its pool shard and the TCP and Unix-socket listeners, and the
/// process-level controls (reload, shutdown modes, signals).
public final class LifeguardServer: DaemonControl {
    public private(set) var configuration: Configuration
    private let configurationPath: String
    private let group: MultiThreadedEventLoopGroup
    private let shard: PoolShard
    private var tcpListeners: [Channel] = []
    private var unixListener: Channel?
    private let logger: Logger
    private var unixSocketPath: String?
    private let reopenLog: () -> Void
    private let requestExit: () -> Void
    private var drainTimer: RepeatedTask?
    /// Set by the first SIGTERM / SIGINT, so that the second one exits at once.
    private var drainMode: ShutdownMode?

    /// - Parameters:
    ///   - reopenLog: reopens the log file (SIGHUP and RELOAD, for log rotation).
    ///   - requestExit: called once the daemon should exit; the caller then calls `shutdown()`.
    public init(
        configurationPath: String, configuration: Configuration, userList: UserList, logger: Logger,
        reopenLog: @escaping () -> Void, requestExit: @escaping () -> Void
    ) {
        self.configurationPath = configurationPath
        self.configuration = configuration
        self.logger = logger
        self.reopenLog = reopenLog
        self.requestExit = requestExit
        // One loop for now; the shard is shaped so that each loop can later own its own.
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.shard = PoolShard(
            eventLoop: group.next(), configuration: configuration, userList: userList, logger: logger)
        shard.control.daemon = self
    }

    /// Binds every listener; throws (with the address in the message) when one cannot be bound.
    public func start() throws {
        let settings = configuration.settings
        let shard = self.shard
        try shard.eventLoop.submit { shard.startJanitor() }.wait()

        // Socket options go on the listening socket, which accepted sockets inherit (NIO already sets
        // TCP_NODELAY there): NIO's per-child option list costs more per accepted client than the rest of
        // accepting it, so the one NIO-level option, the write watermark, is set by ClientAcceptor.
        // ServerBootstrap is a class: each listener gets its own, so TCP options never reach the Unix socket.
        let group = self.group
        func makeBootstrap() -> ServerBootstrap {
            ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: Int32(settings.listenBacklog))
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .serverChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ClientAcceptor(shard: shard, writeWatermark: clientWriteWatermark))
                    }
                }
        }

        for address in settings.listenAddresses {
            let hosts = address == "*" ? ["0.0.0.0", "::"] : [address]
            for host in hosts {
                do {
                    var tcp = makeBootstrap()
                    for (level, name, value) in TCPTuning.listenerOptions(settings) {
                        tcp = tcp.serverChannelOption(
                            ChannelOptions.Types.SocketOption(level: SocketOptionLevel(level), name: SocketOptionName(name)),
                            value: value)
                    }
                    if settings.soReuseport {
                        tcp = tcp.serverChannelOption(ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_REUSEPORT)), value: 1)
                    }
                    let channel = try tcp.bind(host: host, port: settings.listenPort).wait()
                    tcpListeners.append(channel)
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
                let channel = try makeBootstrap().bind(unixDomainSocketPath: path).wait()
                chmod(path, mode_t(settings.unixSocketMode))
                unixListener = channel
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

    /// Closes the listeners, says goodbye to every connection (Terminate to servers) and stops the event loop.
    public func shutdown() {
        for listener in tcpListeners + [unixListener].compactMap({ $0 }) { try? listener.close().wait() }
        tcpListeners = []
        unixListener = nil
        let shard = self.shard
        try? shard.eventLoop.submit {
            shard.stop()
            shard.closeAllConnections()
        }.wait()
        if let unixSocketPath { unlink(unixSocketPath) }
        try? group.syncShutdownGracefully()
    }

    // MARK: Signals

    /// PgBouncer's signals: HUP reload, TERM wait for clients, INT wait for servers (a second TERM or INT
    /// exits at once), QUIT exit, USR1 pause, USR2 resume. Safe to call from any thread.
    public func handleSignal(_ signalNumber: Int32) {
        shard.eventLoop.execute { [self] in
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
            for client in shard.clientSessions.values where client.listState == "waiting" {
                client.kill(PoolerError("server shutting down"))
            }
        }
        drainMode = mode
        // Only the console stays reachable, over the Unix socket (as in PgBouncer 1.25).
        for listener in tcpListeners { listener.close(promise: nil) }
        tcpListeners = []
        drainTimer?.cancel()
        drainTimer = shard.eventLoop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(100)) {
            [weak self] _ in
            self?.exitIfDrained()
        }
    }

    private func exitIfDrained() {
        let drained: Bool
        switch drainMode {
        case .waitForClients: drained = shard.clientSessions.values.allSatisfy { $0.listState == nil }
        case .waitForServers: drained = shard.serverConnections.values.allSatisfy { $0.listState != "active" }
        case .immediate, nil: drained = false
        }
        if drained {
            drainTimer?.cancel()
            drainTimer = nil
            requestExit()
        }
    }
}

/// The TCP keys of `[pgbouncer]` as socket options. Set on the listening socket, they are inherited by every
/// accepted one; the server side sets the same keepalive and timeout options on each connection.
enum TCPTuning {
    static func connectionOptions(_ settings: Settings) -> [(Int32, Int32, SocketOptionValue)] {
        var options: [(Int32, Int32, SocketOptionValue)] = [(SOL_SOCKET, SO_KEEPALIVE, settings.tcpKeepalive ? 1 : 0)]
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

    static func listenerOptions(_ settings: Settings) -> [(Int32, Int32, SocketOptionValue)] {
        var options = connectionOptions(settings)
        // PgBouncer hard-codes 45 seconds: accept() only once the client has sent its first packet.
        if settings.tcpDeferAccept > 0 { options.append((Int32(IPPROTO_TCP), TCP_DEFER_ACCEPT, 45)) }
        return options
    }
}

/// Writes to a client beyond this stop reads from its server until the client catches up.
private let clientWriteWatermark = ChannelOptions.Types.WriteBufferWaterMark(low: 32 * 1024, high: 128 * 1024)

public struct StartupError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
