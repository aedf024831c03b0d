import PostgresWire

/// Decides when a server connection may go back to the pool, from the messages seen in both directions.
///
/// Every client message that the server answers with exactly one ReadyForQuery (Query, Sync, FunctionCall)
/// is counted when it has been sent; each ReadyForQuery settles one. Extended-protocol messages (Parse, Bind,
/// Describe, Execute, Close) open an implicit transaction that only a later Sync settles, so they mark
/// the server busy until one is sent. The server is free again only when nothing is outstanding or unsynced
/// and the last status was idle, so a pipelined batch or an open transaction keeps its server.
///
/// COPY FROM STDIN is the exception: from the Execute that starts it until the client's CopyDone or
/// CopyFail, the server ignores Sync, so Syncs sent in that span (libpq pipelines send one right after the
/// Execute) are taken back when the server's CopyInResponse shows the COPY began.
public struct TransactionTracker: Sendable, Equatable {
    public enum Decision: Sendable, Equatable {
        /// Keep the server linked to this client.
        case keep
        /// The transaction is over: the server may serve another client.
        case release
        /// Statement mode saw a transaction stay open: PgBouncer's error, then close.
        case transactionBlockInStatementMode
    }

    public let poolMode: PoolMode
    public private(set) var outstandingRequests = 0
    public private(set) var status: TransactionStatus = .idle
    /// Extended-protocol messages were sent after the last Sync (or Query).
    public private(set) var hasUnsyncedMessages = false
    /// Syncs sent since the last Execute, which the server ignores should that Execute start a COPY.
    private var syncsSinceExecute = 0
    /// The server is reading COPY data: from its CopyInResponse to the client's CopyDone or CopyFail.
    public private(set) var isInCopyIn = false

    public init(poolMode: PoolMode) {
        self.poolMode = poolMode
    }

    /// True when the server is between transactions with nothing in flight: safe to hand to another client.
    public var isIdle: Bool {
        outstandingRequests == 0 && status == .idle && !hasUnsyncedMessages && !isInCopyIn
    }

    /// A complete client message of type `id` was forwarded.
    @inline(__always)
    public mutating func clientSent(_ id: UInt8) {
        switch id {
        case FrontendID.sync:
            // The server ignores a Sync in the middle of COPY data.
            guard !isInCopyIn else { return }
            outstandingRequests += 1
            hasUnsyncedMessages = false
            syncsSinceExecute += 1
        case FrontendID.query, FrontendID.functionCall:
            outstandingRequests += 1
            hasUnsyncedMessages = false
            syncsSinceExecute = 0
        case FrontendID.execute:
            hasUnsyncedMessages = true
            syncsSinceExecute = 0
        case FrontendID.parse, FrontendID.bind, FrontendID.describe, FrontendID.close:
            hasUnsyncedMessages = true
        case FrontendID.copyDone, FrontendID.copyFail:
            isInCopyIn = false
        default:
            // Flush only asks for pending replies (psycopg sends one after the Sync ending a pipeline);
            // COPY data and the like belong to a request already counted.
            break
        }
    }

    /// The server sent CopyInResponse: it reads COPY data now. After an Execute, the Syncs sent since never
    /// get their ReadyForQuery, and the extended-protocol transaction stays open until a Sync after the data.
    public mutating func serverStartedCopyIn() {
        isInCopyIn = true
        guard syncsSinceExecute > 0 else { return }
        outstandingRequests -= min(syncsSinceExecute, outstandingRequests)
        syncsSinceExecute = 0
        hasUnsyncedMessages = true
    }

    /// The server sent ReadyForQuery with `newStatus`.
    public mutating func serverReady(_ newStatus: TransactionStatus) -> Decision {
        if outstandingRequests > 0 { outstandingRequests -= 1 }
        status = newStatus
        guard outstandingRequests == 0, !hasUnsyncedMessages else { return .keep }
        switch (poolMode, newStatus) {
        case (.session, _):
            return .keep
        case (_, .idle):
            return .release
        case (.statement, _):
            return .transactionBlockInStatementMode
        case (.transaction, _):
            return .keep
        }
    }
}
