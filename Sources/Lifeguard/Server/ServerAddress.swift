import Glibc
import LifeguardCore
import NIOCore
import NIOPosix
import PostgresWire

/// Where a database's server connections go: TCP host and port, or a Unix socket in a directory.
enum ServerAddress: CustomStringConvertible, Equatable {
    case tcp(host: String, port: Int)
    case unixSocket(path: String)

    /// Every host of the database's `host=` (a comma list is allowed), in order.
    static func targets(database: DatabaseDefinition, settings: Settings) -> [ServerAddress] {
        let hosts = (database.host ?? "").split(separator: ",").map { String($0.filter { !$0.isWhitespace }) }
        if hosts.isEmpty {
            // PgBouncer's default: the Unix socket directory it listens in is also where it looks for servers.
            let directory = settings.unixSocketDir.isEmpty ? "/tmp" : settings.unixSocketDir
            return [.unixSocket(path: "\(directory)/.s.PGSQL.\(database.port)")]
        }
        return hosts.map { host in
            host.hasPrefix("/") ? .unixSocket(path: "\(host)/.s.PGSQL.\(database.port)") : .tcp(host: host, port: database.port)
        }
    }

    var description: String {
        switch self {
        case .tcp(let host, let port): return "\(host):\(port)"
        case .unixSocket(let path): return "unix:\(path)"
        }
    }

    /// Connects, resolving a host name through the shard's cache (never on the event loop).
    func connect(_ bootstrap: ClientBootstrap, resolver: HostResolver) -> EventLoopFuture<Channel> {
        switch self {
        case .unixSocket(let path):
            return bootstrap.connect(unixDomainSocketPath: path)
        case .tcp(let host, let port):
            // Like libpq, try each address of the name in turn until one connects.
            return resolver.resolve(host: host, port: port).flatMap { Self.connect(bootstrap, to: $0[...]) }
        }
    }

    private static func connect(_ bootstrap: ClientBootstrap, to addresses: ArraySlice<SocketAddress>)
        -> EventLoopFuture<Channel>
    {
        let attempt = bootstrap.connect(to: addresses.first!)
        guard addresses.count > 1 else { return attempt }
        return attempt.flatMapError { _ in connect(bootstrap, to: addresses.dropFirst()) }
    }
}

/// Sends a CancelRequest for `processID`/`secretKey` to the server a connection is talking to, on a fresh
/// connection, as the protocol requires. The future completes when PostgreSQL has closed that connection (it
/// has acted on the request), or when `cancel_wait_timeout` gives up on it; it fails if no connection could
/// be made in that time.
func sendCancel(to address: SocketAddress, processID: Int32, secretKey: Int32, timeout: Double, on eventLoop: EventLoop)
    -> EventLoopFuture<Void>
{
    let deadline = TimeAmount.nanoseconds(max(Int64(timeout * 1e9), 1_000_000))
    let bootstrap = ClientBootstrap(group: eventLoop).connectTimeout(deadline)
    return bootstrap.connect(to: address).flatMap { channel in
        let giveUp = channel.eventLoop.scheduleTask(in: deadline) { channel.close(promise: nil) }
        var packet = channel.allocator.buffer(capacity: 16)
        packet.writeCancelRequest(processID: processID, secretKey: secretKey)
        channel.writeAndFlush(packet, promise: nil)
        return channel.closeFuture.always { _ in giveUp.cancel() }
    }
}

/// Host names resolved off the event loop (getaddrinfo blocks) and cached: answers for `dns_max_ttl`,
/// failures for `dns_nxdomain_ttl`. Each new connection takes the next address of a name, round-robin.
/// Unchecked Sendable: every method runs on `eventLoop` (the thread pool only runs the lookup function).
final class HostResolver: @unchecked Sendable {
    private let eventLoop: EventLoop
    private let threadPool: NIOThreadPool
    /// The blocking lookup (getaddrinfo by default), run on the thread pool.
    private let lookUp: @Sendable (String, Int) throws -> [SocketAddress]
    private var cache: [String: Entry] = [:]
    var maxTTL: Double
    var failureTTL: Double

    private struct Entry {
        var addresses: [SocketAddress]
        var error: Error?
        var expires: NIODeadline
        var next = 0
    }

    init(
        eventLoop: EventLoop, threadPool: NIOThreadPool = .singleton, maxTTL: Double, failureTTL: Double,
        lookUp: @escaping @Sendable (String, Int) throws -> [SocketAddress] = HostResolver.systemLookUp
    ) {
        self.eventLoop = eventLoop
        self.threadPool = threadPool
        self.lookUp = lookUp
        self.maxTTL = maxTTL
        self.failureTTL = failureTTL
    }

    /// The addresses of `host`, starting at the next one in turn (DNS round-robin across connections).
    func resolve(host: String, port: Int) -> EventLoopFuture<[SocketAddress]> {
        // IP literals need no lookup.
        if let literal = try? SocketAddress(ipAddress: host, port: port) {
            return eventLoop.makeSucceededFuture([literal])
        }
        let key = "\(host):\(port)"
        if var entry = cache[key], entry.expires > .now() {
            if let error = entry.error { return eventLoop.makeFailedFuture(error) }
            let start = entry.next % entry.addresses.count
            entry.next += 1
            cache[key] = entry
            return eventLoop.makeSucceededFuture(Array(entry.addresses[start...] + entry.addresses[..<start]))
        }
        let lookUp = self.lookUp
        return threadPool.runIfActive(eventLoop: eventLoop) {
            try lookUp(host, port)
        }.flatMapErrorThrowing { error in
            self.cache[key] = Entry(addresses: [], error: error, expires: .now() + .nanoseconds(Int64(self.failureTTL * 1e9)))
            throw error
        }.map { addresses in
            self.cache[key] = Entry(
                addresses: addresses, error: nil, expires: .now() + .nanoseconds(Int64(self.maxTTL * 1e9)), next: 1)
            return addresses
        }
    }

    struct LookupError: Error, CustomStringConvertible {
        var host: String
        var description: String { "could not resolve host \(host)" }
    }

    /// Every address of `host`, IPv4 and IPv6, from getaddrinfo (blocking: runs on the thread pool).
    @Sendable static func systemLookUp(host: String, port: Int) throws -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let list else { throw LookupError(host: host) }
        defer { freeaddrinfo(list) }
        var addresses: [SocketAddress] = []
        var cursor: UnsafeMutablePointer<addrinfo>? = list
        while let info = cursor {
            if let address = info.pointee.ai_addr {
                switch Int32(address.pointee.sa_family) {
                case AF_INET:
                    address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                        addresses.append(SocketAddress($0.pointee, host: host))
                    }
                case AF_INET6:
                    address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                        addresses.append(SocketAddress($0.pointee, host: host))
                    }
                default:
                    break
                }
            }
            cursor = info.pointee.ai_next
        }
        guard !addresses.isEmpty else { throw LookupError(host: host) }
        return addresses
    }
}
