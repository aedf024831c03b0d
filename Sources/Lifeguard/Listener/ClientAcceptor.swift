import NIOCore

/// Sets up every accepted client connection in one synchronous step, in place of ServerBootstrap's own
/// accept handler.
///
/// ServerBootstrap's `AcceptHandler` wraps each accepted channel in a chain of futures (options, then the
/// child initializer, then the hand-off), about a tenth of the instructions Lifeguard spends on a client that
/// connects, runs one query and leaves. This handler sits in front of it on the listening channel, sets the
/// child up directly and passes it on from the AcceptHandler's position, so the channel goes straight to
/// NIO's registration and the AcceptHandler sees nothing. Should NIO ever rename that handler, accepted
/// channels simply go through it as before (with nothing left for it to do).
final class ClientAcceptor: ChannelInboundHandler {
    typealias InboundIn = Channel

    /// The bootstrap's handler name for its AcceptHandler.
    private static let bootstrapAcceptHandlerName = "AcceptHandler"

    private let shard: PoolShard
    private let writeWatermark: ChannelOptions.Types.WriteBufferWaterMark
    /// The AcceptHandler's context: firing from it skips the AcceptHandler.
    private var registrationContext: ChannelHandlerContext?

    init(shard: PoolShard, writeWatermark: ChannelOptions.Types.WriteBufferWaterMark) {
        self.shard = shard
        self.writeWatermark = writeWatermark
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let child = unwrapInboundIn(data)
        // One event loop serves the listeners and their clients, so the child can be set up synchronously.
        assert(child.eventLoop.inEventLoop)
        setUp(child)
        if registrationContext == nil {
            registrationContext = try? context.pipeline.syncOperations.context(name: Self.bootstrapAcceptHandlerName)
        }
        (registrationContext ?? context).fireChannelRead(data)
    }

    private func setUp(_ child: Channel) {
        do {
            try child.syncOptions?.setOption(.writeBufferWaterMark, value: writeWatermark)
            try child.pipeline.syncOperations.addHandler(ClientSession(shard: shard))
        } catch {
            shard.logger.warning("could not set up an accepted connection: \(error)")
            child.close(promise: nil)
        }
    }
}
