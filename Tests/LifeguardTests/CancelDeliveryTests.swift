import Foundation
import Glibc
import NIOCore
import NIOPosix
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

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let start = Date()
        let delivery = sendCancel(
            to: try SocketAddress(ipAddress: "10.214.0.2", port: 5432), processID: 1, secretKey: 2, timeout: 0.3,
            on: group.next())
        #expect(throws: (any Error).self) { try delivery.wait() }
        let elapsed = Date().timeIntervalSince(start)
        #expect(elapsed >= 0.25 && elapsed < 3, "gave up after \(elapsed) s")
    }

    @Test func cancelToAListeningServerIsDelivered() throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        defer { try? group.syncShutdownGracefully() }
        let received = group.next().makePromise(of: ByteBuffer.self)
        let server = try ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(promise: received))
                }
            }
            .bind(host: "127.0.0.1", port: 0).wait()
        defer { try? server.close().wait() }
        try sendCancel(to: server.localAddress!, processID: 7, secretKey: 9, timeout: 5, on: group.next()).wait()
        var packet = try received.futureResult.wait()
        #expect(packet.readInteger(as: Int32.self) == 16)
        #expect(packet.readInteger(as: Int32.self) == 80_877_102)
        #expect(packet.readInteger(as: Int32.self) == 7)
        #expect(packet.readInteger(as: Int32.self) == 9)
    }
}

/// Collects what a test server receives, closing once a whole CancelRequest is in.
private final class Collector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private var bytes = ByteBuffer()
    private let promise: EventLoopPromise<ByteBuffer>

    init(promise: EventLoopPromise<ByteBuffer>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        bytes.writeBuffer(&buffer)
        // Like PostgreSQL: act on the 16-byte request, then close.
        if bytes.readableBytes >= 16 { context.close(promise: nil) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.succeed(bytes)
    }
}
