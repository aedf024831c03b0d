import NIOConcurrencyHelpers
import NIOCore
import Glibc
import NIOPosix
import Testing

@testable import Lifeguard

/// The DNS cache: lookups happen off the event loop, answers live for dns_max_ttl, failures for
/// dns_nxdomain_ttl, and each new connection starts at the next address.
@Suite struct HostResolverTests {
    private final class CountingLookUp: Sendable {
        let calls = NIOLockedValueBox(0)
        let fail: Bool

        init(fail: Bool = false) { self.fail = fail }

        func callAsFunction(_ host: String, _ port: Int) throws -> [SocketAddress] {
            calls.withLockedValue { $0 += 1 }
            if fail { throw HostResolver.LookupError(host: host) }
            return [try SocketAddress(ipAddress: "10.0.0.1", port: port), try SocketAddress(ipAddress: "10.0.0.2", port: port)]
        }
    }

    private func resolver(_ lookUp: CountingLookUp, ttl: Double) -> (HostResolver, MultiThreadedEventLoopGroup) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let resolver = HostResolver(
            eventLoop: group.next(), maxTTL: ttl, failureTTL: ttl, lookUp: { try lookUp($0, $1) })
        return (resolver, group)
    }

    private func resolve(_ resolver: HostResolver, on group: EventLoopGroup) throws -> [String] {
        try group.next().flatSubmit { resolver.resolve(host: "db.example", port: 5432) }.wait()
            .map { $0.ipAddress ?? "" }
    }

    @Test func answersAreCachedAndRotated() throws {
        let lookUp = CountingLookUp()
        let (resolver, group) = resolver(lookUp, ttl: 60)
        defer { try? group.syncShutdownGracefully() }
        #expect(try resolve(resolver, on: group) == ["10.0.0.1", "10.0.0.2"])
        #expect(try resolve(resolver, on: group) == ["10.0.0.2", "10.0.0.1"], "the next connection starts at the next address")
        #expect(lookUp.calls.withLockedValue { $0 } == 1)
    }

    @Test func answersExpireAfterTheTTL() throws {
        let lookUp = CountingLookUp()
        let (resolver, group) = resolver(lookUp, ttl: 0.1)
        defer { try? group.syncShutdownGracefully() }
        _ = try resolve(resolver, on: group)
        Thread.sleep(0.2)
        _ = try resolve(resolver, on: group)
        #expect(lookUp.calls.withLockedValue { $0 } == 2)
    }

    @Test func failuresAreCachedToo() throws {
        let lookUp = CountingLookUp(fail: true)
        let (resolver, group) = resolver(lookUp, ttl: 60)
        defer { try? group.syncShutdownGracefully() }
        #expect(throws: HostResolver.LookupError.self) { try resolve(resolver, on: group) }
        #expect(throws: HostResolver.LookupError.self) { try resolve(resolver, on: group) }
        #expect(lookUp.calls.withLockedValue { $0 } == 1)
    }

    @Test func ipLiteralsNeedNoLookup() throws {
        let lookUp = CountingLookUp()
        let (resolver, group) = resolver(lookUp, ttl: 60)
        defer { try? group.syncShutdownGracefully() }
        let addresses = try group.next().flatSubmit { resolver.resolve(host: "127.0.0.1", port: 1) }.wait()
        #expect(addresses.map(\.ipAddress) == ["127.0.0.1"])
        #expect(lookUp.calls.withLockedValue { $0 } == 0)
    }
}

private enum Thread {
    static func sleep(_ seconds: Double) { usleep(useconds_t(seconds * 1_000_000)) }
}
