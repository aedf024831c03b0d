import Glibc
import LifeguardCore
import Logging
import NIOCore
import NIOPosix

/// The running daemon: the event loop, its pool shard and the TCP and Unix-socket listeners.
public final class LifeguardServer {
    public let configuration: Configuration
    private let group: MultiThreadedEventLoopGroup
    private let shard: PoolShard
    private var listeners: [Channel] = []
    private let logger: Logger
    private var unixSocketPath: String?

    public init(configuration: Configuration, userList: UserList, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        // One loop for now; the shard is shaped so that each loop can later own its own.
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.shard = PoolShard(
            eventLoop: group.next(), configuration: configuration, userList: userList, logger: logger)
    }

    /// Binds every listener; throws (with the address in the message) when one cannot be bound.
    public func start() throws {
        let settings = configuration.settings
        let shard = self.shard
        try shard.eventLoop.submit { shard.startJanitor() }.wait()

        // Socket options go on the listening socket, which accepted sockets inherit (NIO already sets
        // TCP_NODELAY there): NIO's per-child option list costs more per accepted client than the rest of
        // accepting it, so the one NIO-level option, the write watermark, is set directly in the initializer.
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: Int32(settings.listenBacklog))
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.syncOptions?.setOption(.writeBufferWaterMark, value: clientWriteWatermark)
                    try channel.pipeline.syncOperations.addHandler(ClientSession(shard: shard))
                }
            }

        for address in settings.listenAddresses {
            let hosts = address == "*" ? ["0.0.0.0", "::"] : [address]
            for host in hosts {
                do {
                    var tcp = bootstrap
                        .serverChannelOption(.socketOption(.so_keepalive), value: settings.tcpKeepalive ? 1 : 0)
                    if settings.soReuseport {
                        tcp = tcp.serverChannelOption(ChannelOptions.Types.SocketOption(level: SocketOptionLevel(SOL_SOCKET), name: SocketOptionName(SO_REUSEPORT)), value: 1)
                    }
                    let channel = try tcp.bind(host: host, port: settings.listenPort).wait()
                    listeners.append(channel)
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
                let channel = try bootstrap.bind(unixDomainSocketPath: path).wait()
                chmod(path, mode_t(settings.unixSocketMode))
                listeners.append(channel)
                unixSocketPath = path
                logger.info("listening on unix:\(path)")
            } catch {
                throw StartupError("cannot listen on unix:\(path): \(error)")
            }
        }
        if listeners.isEmpty {
            throw StartupError("nothing to listen on: set listen_addr or unix_socket_dir")
        }
    }

    /// Closes the listeners and the event loop; open connections are dropped.
    public func shutdown() {
        for listener in listeners { try? listener.close().wait() }
        listeners = []
        let shard = self.shard
        try? shard.eventLoop.submit { shard.stop() }.wait()
        if let unixSocketPath { unlink(unixSocketPath) }
        try? group.syncShutdownGracefully()
    }
}

/// Writes to a client beyond this stop reads from its server until the client catches up.
private let clientWriteWatermark = ChannelOptions.Types.WriteBufferWaterMark(low: 32 * 1024, high: 128 * 1024)

public struct StartupError: Error, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
