import Glibc
import LifeguardCore
import LifeguardEngine
import NIOCore
import PostgresWire

/// Where a database's server connections go: TCP host and port, or a Unix socket in a directory.
enum ServerAddress: CustomStringConvertible, Equatable {
    case tcp(host: String, port: Int)
    case unixSocket(path: String)

    /// Every host of the database's `host=` (a comma list is allowed), in order.
    static func targets(database: DatabaseDefinition, settings: Settings) -> [ServerAddress] {
        let hosts = (database.host ?? "").split(separator: ",").map { String($0.filter { !$0.isWhitespace }) }
        if hosts.isEmpty { return [at(host: nil, port: database.port, settings: settings)] }
        return hosts.map { at(host: $0, port: database.port, settings: settings) }
    }

    /// Where a `[peers]` entry listens.
    static func peer(_ peer: PeerDefinition, settings: Settings) -> ServerAddress {
        at(host: peer.host, port: peer.port, settings: settings)
    }

    /// A host of a connection string: a directory (leading "/") holds a Unix socket; no host means the
    /// Unix socket directory Lifeguard listens in, PgBouncer's default.
    private static func at(host: String?, port: Int, settings: Settings) -> ServerAddress {
        guard let host, !host.isEmpty else {
            let directory = settings.unixSocketDir.isEmpty ? "/tmp" : settings.unixSocketDir
            return .unixSocket(path: "\(directory)/.s.PGSQL.\(port)")
        }
        return host.hasPrefix("/") ? .unixSocket(path: "\(host)/.s.PGSQL.\(port)") : .tcp(host: host, port: port)
    }

    var description: String {
        switch self {
        case .tcp(let host, let port): return "\(host):\(port)"
        case .unixSocket(let path): return "unix:\(path)"
        }
    }

    /// The socket addresses to try, resolving a host name through the shard's cache (never on the loop).
    /// `completion` runs on the loop, at once when no lookup is needed.
    func resolve(with resolver: HostResolver, completion: @escaping (Result<[SocketAddress], Error>) -> Void) {
        switch self {
        case .unixSocket(let path):
            completion(Result { [try SocketAddress(unixDomainSocketPath: path)] })
        case .tcp(let host, let port):
            resolver.resolve(host: host, port: port, completion: completion)
        }
    }
}

/// Sends a CancelRequest for `processID`/`secretKey` to the server a connection is talking to, on a fresh
/// connection, as the protocol requires. `completion` runs when PostgreSQL has closed that connection (it has
/// acted on the request), when it could not be made, or when `cancel_wait_timeout` gives up on it.
final class CancelDelivery: ConnectionDelegate {
    private var completion: (() -> Void)?
    private var connection: Connection?
    private let packet: ByteBuffer

    private init(packet: ByteBuffer, completion: @escaping () -> Void) {
        self.packet = packet
        self.completion = completion
    }

    static func send(
        to address: SocketAddress, processID: Int32, secretKey: Int32, timeout: Double, on loop: EngineLoop,
        completion: @escaping () -> Void
    ) {
        var packet = ByteBufferAllocator().buffer(capacity: 16)
        packet.writeCancelRequest(processID: processID, secretKey: secretKey)
        let delivery = CancelDelivery(packet: packet, completion: completion)
        do {
            delivery.connection = try Connection.connect(to: address, options: [], on: loop, delegate: delivery)
        } catch {
            loop.deferTask { delivery.finish() }
            return
        }
        // The connection holds the delivery (its delegate) until it closes; the timer closes it at the latest.
        loop.schedule(after: max(timeout, 0.001)) { [weak delivery] in delivery?.connection?.close() }
    }

    private func finish() {
        connection = nil
        completion?()
        completion = nil
    }

    func connectionConnected(_ connection: Connection) {
        connection.writeAndFlush(packet)
    }

    func connectionFailed(_ connection: Connection, error: SocketError) { finish() }
    func connectionRead(_ connection: Connection, _ bytes: ByteBuffer) {}
    func connectionReadComplete(_ connection: Connection) {}
    func connectionClosed(_ connection: Connection, error: SocketError?) { finish() }
}

/// Host names resolved off the event loop (getaddrinfo blocks) and cached: answers for `dns_max_ttl`,
/// failures for `dns_nxdomain_ttl`. Each new connection takes the next address of a name, round-robin.
/// Every method runs on the loop; only the lookup function runs on a background thread.
final class HostResolver {
    private let loop: EngineLoop
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
        loop: EngineLoop, maxTTL: Double, failureTTL: Double,
        lookUp: @escaping @Sendable (String, Int) throws -> [SocketAddress] = HostResolver.systemLookUp
    ) {
        self.loop = loop
        self.lookUp = lookUp
        self.maxTTL = maxTTL
        self.failureTTL = failureTTL
    }

    /// The addresses of `host`, starting at the next one in turn (DNS round-robin across connections).
    func resolve(host: String, port: Int, completion: @escaping (Result<[SocketAddress], Error>) -> Void) {
        // IP literals need no lookup.
        if let literal = try? SocketAddress(ipAddress: host, port: port) {
            completion(.success([literal]))
            return
        }
        let key = "\(host):\(port)"
        if var entry = cache[key], entry.expires > .now() {
            if let error = entry.error {
                completion(.failure(error))
                return
            }
            let start = entry.next % entry.addresses.count
            entry.next += 1
            cache[key] = entry
            completion(.success(Array(entry.addresses[start...] + entry.addresses[..<start])))
            return
        }
        let lookUp = self.lookUp
        loop.offload({ Result { try lookUp(host, port) } }) { result in
            switch result {
            case .success(let addresses):
                self.cache[key] = Entry(
                    addresses: addresses, error: nil, expires: .now() + .nanoseconds(Int64(self.maxTTL * 1e9)), next: 1)
            case .failure(let error):
                self.cache[key] = Entry(
                    addresses: [], error: error, expires: .now() + .nanoseconds(Int64(self.failureTTL * 1e9)))
            }
            completion(result)
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
