import EngineTestSupport
import Glibc
import LifeguardEngine
import NIOConcurrencyHelpers
import NIOCore
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

    private func resolver(_ lookUp: CountingLookUp, ttl: Double) throws -> (HostResolver, EngineLoop) {
        let loop = try EngineLoop()
        let resolver = HostResolver(loop: loop, maxTTL: ttl, failureTTL: ttl, lookUp: { try lookUp($0, $1) })
        return (resolver, loop)
    }

    /// Resolves on the loop, turning it until the answer (which may come from the lookup thread) is in.
    private func resolve(_ resolver: HostResolver, on loop: EngineLoop, host: String = "db.example") throws -> [String] {
        var answer: Result<[SocketAddress], Error>?
        resolver.resolve(host: host, port: 5432) { answer = $0 }
        try #require(loop.run(until: { answer != nil }), "no answer")
        return try answer!.get().map { $0.ipAddress ?? "" }
    }

    @Test func answersAreCachedAndRotated() throws {
        let lookUp = CountingLookUp()
        let (resolver, loop) = try resolver(lookUp, ttl: 60)
        #expect(try resolve(resolver, on: loop) == ["10.0.0.1", "10.0.0.2"])
        #expect(try resolve(resolver, on: loop) == ["10.0.0.2", "10.0.0.1"], "the next connection starts at the next address")
        #expect(lookUp.calls.withLockedValue { $0 } == 1)
    }

    @Test func answersExpireAfterTheTTL() throws {
        let lookUp = CountingLookUp()
        let (resolver, loop) = try resolver(lookUp, ttl: 0.1)
        _ = try resolve(resolver, on: loop)
        Thread.sleep(0.2)
        _ = try resolve(resolver, on: loop)
        #expect(lookUp.calls.withLockedValue { $0 } == 2)
    }

    @Test func failuresAreCachedToo() throws {
        let lookUp = CountingLookUp(fail: true)
        let (resolver, loop) = try resolver(lookUp, ttl: 60)
        #expect(throws: HostResolver.LookupError.self) { try resolve(resolver, on: loop) }
        #expect(throws: HostResolver.LookupError.self) { try resolve(resolver, on: loop) }
        #expect(lookUp.calls.withLockedValue { $0 } == 1)
    }

    @Test func ipLiteralsNeedNoLookup() throws {
        let lookUp = CountingLookUp()
        let (resolver, loop) = try resolver(lookUp, ttl: 60)
        #expect(try resolve(resolver, on: loop, host: "127.0.0.1") == ["127.0.0.1"])
        #expect(lookUp.calls.withLockedValue { $0 } == 0)
    }
}

private enum Thread {
    static func sleep(_ seconds: Double) { usleep(useconds_t(seconds * 1_000_000)) }
}
