import LifeguardCore
import NIOCore
import NIOPosix
import PostgresWire

/// Where a database's server connections go: TCP host and port, or a Unix socket in a directory.
enum ServerAddress: CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unixSocket(path: String)

    init(database: DatabaseDefinition, settings: Settings) {
        let host = database.host ?? ""
        if host.hasPrefix("/") {
            self = .unixSocket(path: "\(host)/.s.PGSQL.\(database.port)")
        } else if host.isEmpty {
            // PgBouncer's default: the Unix socket directory it listens in is also where it looks for servers.
            let directory = settings.unixSocketDir.isEmpty ? "/tmp" : settings.unixSocketDir
            self = .unixSocket(path: "\(directory)/.s.PGSQL.\(database.port)")
        } else {
            self = .tcp(host: host, port: database.port)
        }
    }

    var description: String {
        switch self {
        case .tcp(let host, let port): return "\(host):\(port)"
        case .unixSocket(let path): return "unix:\(path)"
        }
    }

    func connect(_ bootstrap: ClientBootstrap) -> EventLoopFuture<Channel> {
        switch self {
        case .tcp(let host, let port): return bootstrap.connect(host: host, port: port)
        case .unixSocket(let path): return bootstrap.connect(unixDomainSocketPath: path)
        }
    }

    /// Sends a CancelRequest for `processID`/`secretKey` on a fresh connection, as the protocol requires.
    func sendCancel(processID: Int32, secretKey: Int32, on eventLoop: EventLoop) {
        let bootstrap = ClientBootstrap(group: eventLoop)
        connect(bootstrap).whenSuccess { channel in
            var packet = channel.allocator.buffer(capacity: 16)
            packet.writeCancelRequest(processID: processID, secretKey: secretKey)
            channel.writeAndFlush(packet).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
