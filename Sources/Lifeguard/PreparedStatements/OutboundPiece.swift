import LifeguardCore
import NIOCore

/// A client's traffic on its way to a server while prepared statements are shared (transaction and
/// statement mode). Most of it is bytes passed on as they came; the messages that name a prepared statement
/// need the server's statement cache, so they stay pieces until a server takes them.
enum OutboundPiece {
    /// Client bytes, unchanged.
    case bytes(ByteBuffer)
    /// A request inside bytes passed on: the server will owe a reply for it.
    case request(ReplyQueue.Request)
    /// A named Parse: sent as the shared statement, or answered by Lifeguard when the server has it.
    case parse(PreparedStatement, clientName: String)
    /// A Describe of a named statement, sent as one of the shared statement, which the server must have
    /// first. The client's request follows as `request`.
    case describe(PreparedStatement)
    /// The head of a Bind of a named statement (as the client sent it), sent naming the shared statement,
    /// which the server must have first. The parameters follow as `bytes`, then the `request`.
    case bindHead(ByteBuffer, PreparedStatement)
    /// Close of a named statement: only the client's name goes; Lifeguard answers CloseComplete.
    case closeStatement
    /// The client sent DEALLOCATE ALL or DISCARD ALL (in the bytes around this piece): the server's
    /// statements are gone from here on, for the messages pipelined after it too.
    case dropAllStatements
}
