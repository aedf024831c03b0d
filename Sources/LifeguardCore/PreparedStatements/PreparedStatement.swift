import NIOConcurrencyHelpers
import NIOCore
import PostgresWire

/// A protocol-level prepared statement as Lifeguard keeps it on servers: one per distinct definition (query
/// text and parameter types), whatever name each client gives it, so many clients share one server-side
/// statement. Client maps and server caches hold it; it leaves the registry when the last of them lets go.
public final class PreparedStatement {
    public let id: Int
    /// The statement's name on every server.
    public let serverName: String
    /// Query text and parameter types, as the client's Parse carried them after the name.
    public let definition: ByteBuffer
    /// The Parse that prepares it on a server that lacks it.
    public let parseMessage: ByteBuffer
    private weak var registry: PreparedStatementRegistry?

    fileprivate init(id: Int, definition: ByteBuffer, registry: PreparedStatementRegistry) {
        self.id = id
        self.serverName = "LIFEGUARD_\(id)"
        self.definition = definition
        var parse = ByteBuffer()
        parse.writeParse(name: serverName, definition: definition)
        self.parseMessage = parse
        self.registry = registry
    }

    deinit {
        registry?.forget(definition)
    }
}

/// Finds the shared statement for a definition. One per process: every engine thread's clients and servers
/// use it, so a server that moves to another thread keeps a cache whose statements mean the same there.
/// Its lock is taken when a client prepares a statement and when a statement dies, never per execution.
public final class PreparedStatementRegistry: @unchecked Sendable {
    private struct WeakStatement {
        weak var statement: PreparedStatement?
    }

    private let lock = NIOLock()
    private var statements: [ByteBuffer: WeakStatement] = [:]
    private var lastID = 0

    public init() {}

    /// The statement for `definition`, shared with every other client that prepared the same one.
    public func statement(for definition: ByteBuffer) -> PreparedStatement {
        lock.withLock {
            if let existing = statements[definition]?.statement { return existing }
            lastID += 1
            // A copy: the definition usually sits in a large read buffer that must not be kept alive.
            var owned = ByteBuffer()
            owned.writeImmutableBuffer(definition)
            let statement = PreparedStatement(id: lastID, definition: owned, registry: self)
            statements[owned] = WeakStatement(statement: statement)
            return statement
        }
    }

    /// Statements some client or server still holds.
    public var count: Int { lock.withLock { statements.count } }

    fileprivate func forget(_ definition: ByteBuffer) {
        lock.withLock {
            // A statement made for the same definition after this one died keeps its entry.
            if statements[definition]?.statement == nil { statements[definition] = nil }
        }
    }
}
