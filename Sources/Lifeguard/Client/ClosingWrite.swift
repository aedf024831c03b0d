import NIOCore

extension ChannelHandlerContext {
    /// How long a connection closing on an error may take to hand its last message to the kernel.
    static let closingWriteGrace = TimeAmount.seconds(1)

    /// Writes a connection's last message (a FATAL error) best effort, then closes: at once when the peer is
    /// not reading (the message could not go out anyway), otherwise once it is written, and after
    /// `closingWriteGrace` in any case. A client that stops reading can never hold its connection, or the
    /// server linked to it, open.
    func writeLastMessageAndClose(_ data: NIOAny) {
        guard channel.isWritable else {
            close(promise: nil)
            return
        }
        writeAndFlush(data).whenComplete { _ in self.close(promise: nil) }
        eventLoop.scheduleTask(in: Self.closingWriteGrace) { self.close(promise: nil) }
    }
}
