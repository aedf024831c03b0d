import EngineTestSupport
import Foundation
import Glibc
import LifeguardEngine
import NIOCore
import Testing

@testable import Lifeguard

/// cancel_wait_timeout: a cancel that cannot be delivered is given up after it.
@Suite struct CancelDeliveryTests {
    /// A host that drops every packet (scripts/blackhole-host.sh).
    @Test(.enabled(if: getuid() == 0 && access("/usr/sbin/ip", X_OK) == 0, "needs root and ip netns"))
    func undeliverableCancelFailsAfterTheTimeout() throws {
        let name = "lgcancel\(getpid() % 10000)"
        defer { _ = system("scripts/blackhole-host.sh destroy \(name)") }
        try #require(system("scripts/blackhole-host.sh create \(name) 10.214.0") == 0, "no network namespace")

        let loop = try EngineLoop()
        let start = Date()
        var finished = false
        CancelDelivery.send(
            to: try SocketAddress(ipAddress: "10.214.0.2", port: 5432), processID: 1, secretKey: 2, timeout: 0.3,
            on: loop
        ) { finished = true }
        #expect(loop.run(until: { finished }))
        let elapsed = Date().timeIntervalSince(start)
        #expect(elapsed >= 0.25 && elapsed < 3, "gave up after \(elapsed) s")
    }

    @Test func cancelToAListeningServerIsDelivered() throws {
        let loop = try EngineLoop()
        let collector = Collector()
        let server = try Listener.listen(
            on: try SocketAddress(ipAddress: "127.0.0.1", port: 0), backlog: 4, listenerOptions: [], loop: loop
        ) { $0.delegate = collector }
        defer { server.close() }
        var finished = false
        CancelDelivery.send(to: server.localAddress!, processID: 7, secretKey: 9, timeout: 5, on: loop) {
            finished = true
        }
        try #require(loop.run(until: { finished }), "the delivery did not finish")
        var packet = collector.bytes
        #expect(packet.readInteger(as: Int32.self) == 16)
        #expect(packet.readInteger(as: Int32.self) == 80_877_102)
        #expect(packet.readInteger(as: Int32.self) == 7)
        #expect(packet.readInteger(as: Int32.self) == 9)
    }
}

/// Collects what a test server receives, closing once a whole CancelRequest is in (as PostgreSQL does).
private final class Collector: ConnectionDelegate {
    private(set) var bytes = ByteBuffer()

    func connectionRead(_ connection: Connection, _ buffer: ByteBuffer) {
        var buffer = buffer
        bytes.writeBuffer(&buffer)
        if bytes.readableBytes >= 16 { connection.close() }
    }

    func connectionReadComplete(_ connection: Connection) {}
    func connectionClosed(_ connection: Connection, error: SocketError?) {}
}
