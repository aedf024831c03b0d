import Testing

@testable import LifeguardCore
import PostgresWire

private let Q = UInt8(ascii: "Q")
private let P = UInt8(ascii: "P")
private let B = UInt8(ascii: "B")
private let D = UInt8(ascii: "D")
private let E = UInt8(ascii: "E")
private let S = UInt8(ascii: "S")
private let F = UInt8(ascii: "F")
private let H = UInt8(ascii: "H")
private let C = UInt8(ascii: "C")
private let d = UInt8(ascii: "d")
private let c = UInt8(ascii: "c")

@Suite struct TransactionTrackerTests {
    @Test func startsIdleWithNothingOutstanding() {
        for mode in PoolMode.allCases {
            let tracker = TransactionTracker(poolMode: mode)
            #expect(tracker.isIdle)
            #expect(tracker.outstandingRequests == 0)
            #expect(tracker.status == .idle)
            #expect(tracker.poolMode == mode)
        }
    }

    @Test func queryCountsAndIdleReadyReleasesInTransactionMode() {
        var tracker = TransactionTracker(poolMode: .transaction)
        tracker.clientSent(Q)
        #expect(tracker.outstandingRequests == 1)
        #expect(!tracker.isIdle)
        #expect(tracker.serverReady(.idle) == .release)
        #expect(tracker.isIdle)
    }

    @Test(arguments: [Q, S, F])
    func requestsThatGetOneReadyForQueryAreCounted(id: UInt8) {
        var tracker = TransactionTracker(poolMode: .transaction)
        tracker.clientSent(id)
        #expect(tracker.outstandingRequests == 1)
        tracker.clientSent(id)
        #expect(tracker.outstandingRequests == 2)
    }

    @Test(arguments: [P, B, D, E, H, C, d, c, UInt8(ascii: "X"), UInt8(ascii: "p"), UInt8(ascii: "f")])
    func otherMessagesAreNotCounted(id: UInt8) {
        var tracker = TransactionTracker(poolMode: .transaction)
        tracker.clientSent(id)
        #expect(tracker.outstandingRequests == 0)
        // Extended-protocol messages leave an implicit transaction open until a Sync; the rest (Flush too) do not.
        #expect(tracker.isIdle == ![P, B, D, E, C].contains(id))
    }

    @Test func extendedQueryCountsOnlyTheSync() {
        var tracker = TransactionTracker(poolMode: .transaction)
        for id in [P, B, D, E] { tracker.clientSent(id) }
        #expect(tracker.outstandingRequests == 0)
        tracker.clientSent(S)
        #expect(tracker.outstandingRequests == 1)
        #expect(tracker.serverReady(.idle) == .release)
    }

    @Test func pipelinedBatchOfThreeSyncsReleasesOnlyAtTheThirdReadyForQuery() {
        var tracker = TransactionTracker(poolMode: .transaction)
        for _ in 0..<3 {
            for id in [P, B, E, S] { tracker.clientSent(id) }
        }
        #expect(tracker.outstandingRequests == 3)
        #expect(tracker.serverReady(.idle) == .keep)
        #expect(tracker.outstandingRequests == 2)
        #expect(!tracker.isIdle)
        #expect(tracker.serverReady(.idle) == .keep)
        #expect(!tracker.isIdle)
        #expect(tracker.serverReady(.idle) == .release)
        #expect(tracker.isIdle)
    }

    @Test func pipelinedBatchInStatementModeWithIntermediateTransactionStatusKeepsUntilTheEnd() {
        // BEGIN; ...; COMMIT sent as three Syncs: the intermediate 'T' statuses are not yet a violation.
        var tracker = TransactionTracker(poolMode: .statement)
        for _ in 0..<3 { tracker.clientSent(S) }
        #expect(tracker.serverReady(.inTransaction) == .keep)
        #expect(tracker.serverReady(.inTransaction) == .keep)
        #expect(tracker.serverReady(.idle) == .release)
    }

    @Test(arguments: [TransactionStatus.inTransaction, .failed])
    func openOrFailedTransactionKeepsInTransactionMode(status: TransactionStatus) {
        var tracker = TransactionTracker(poolMode: .transaction)
        tracker.clientSent(Q)  // BEGIN
        #expect(tracker.serverReady(status) == .keep)
        #expect(tracker.status == status)
        #expect(tracker.outstandingRequests == 0)
        #expect(!tracker.isIdle)
        tracker.clientSent(Q)  // more work
        #expect(tracker.serverReady(status) == .keep)
        tracker.clientSent(Q)  // COMMIT / ROLLBACK
        #expect(tracker.serverReady(.idle) == .release)
        #expect(tracker.isIdle)
    }

    @Test func sessionModeNeverReleases() {
        var tracker = TransactionTracker(poolMode: .session)
        for status in [TransactionStatus.idle, .inTransaction, .failed, .idle] {
            tracker.clientSent(Q)
            #expect(tracker.serverReady(status) == .keep)
        }
        // Idle in the sense of "between transactions", but session mode still keeps it.
        #expect(tracker.isIdle)
    }

    @Test func statementModeReleasesAfterEachStatement() {
        var tracker = TransactionTracker(poolMode: .statement)
        tracker.clientSent(Q)
        #expect(tracker.serverReady(.idle) == .release)
        tracker.clientSent(F)
        #expect(tracker.serverReady(.idle) == .release)
    }

    @Test(arguments: [TransactionStatus.inTransaction, .failed])
    func statementModeOpenTransactionIsAnError(status: TransactionStatus) {
        var tracker = TransactionTracker(poolMode: .statement)
        tracker.clientSent(Q)
        #expect(tracker.serverReady(status) == .transactionBlockInStatementMode)
    }

    @Test func statementModeErrorTextIsPgBouncers() {
        #expect(PoolerError.statementModeTransaction.message == "transaction blocks not allowed in statement pooling mode")
        #expect(PoolerError.statementModeTransaction.sqlState == "08P01")
    }

    @Test func unsolicitedReadyForQueryDoesNotGoNegative() {
        // e.g. the ReadyForQuery after login, or after a server reset query the client never sent.
        var tracker = TransactionTracker(poolMode: .transaction)
        #expect(tracker.serverReady(.idle) == .release)
        #expect(tracker.outstandingRequests == 0)
        tracker.clientSent(Q)
        #expect(tracker.outstandingRequests == 1)
    }

    @Test func isIdleNeedsBothNoOutstandingAndIdleStatus() {
        var tracker = TransactionTracker(poolMode: .transaction)
        tracker.clientSent(Q)
        tracker.clientSent(Q)
        #expect(tracker.serverReady(.idle) == .keep)
        #expect(tracker.status == .idle)
        #expect(!tracker.isIdle)  // one still outstanding
        #expect(tracker.serverReady(.inTransaction) == .keep)
        #expect(tracker.outstandingRequests == 0)
        #expect(!tracker.isIdle)  // inside a transaction
    }

    @Test func extendedMessagesWithoutSyncKeepTheServer() {
        // Parse/Bind/Execute open an implicit transaction that only a Sync ends; a Flush does not end it.
        var tracker = TransactionTracker(poolMode: .transaction)
        for id in [FrontendID.parse, FrontendID.bind, FrontendID.execute, FrontendID.flush] {
            tracker.clientSent(id)
        }
        #expect(tracker.hasUnsyncedMessages)
        #expect(!tracker.isIdle)
        tracker.clientSent(FrontendID.sync)
        #expect(!tracker.hasUnsyncedMessages)
        #expect(tracker.serverReady(.idle) == .release)
        #expect(tracker.isIdle)
    }

    @Test func flushAfterTheLastSyncDoesNotKeepTheServer() {
        // psycopg ends every pipeline with Sync then Flush; the server once stayed with that client for good.
        var tracker = TransactionTracker(poolMode: .transaction)
        for id in [FrontendID.parse, FrontendID.bind, FrontendID.execute, FrontendID.sync, FrontendID.flush] {
            tracker.clientSent(id)
        }
        #expect(!tracker.hasUnsyncedMessages)
        #expect(tracker.serverReady(.idle) == .release)
    }

    @Test func nextBatchSentBeforeTheLastReadyForQueryKeepsTheServer() {
        // A pipelining client has already sent the start of its next batch when the previous Sync is answered.
        var tracker = TransactionTracker(poolMode: .transaction)
        for id in [FrontendID.parse, FrontendID.bind, FrontendID.execute, FrontendID.sync] {
            tracker.clientSent(id)
        }
        for id in [FrontendID.bind, FrontendID.execute] {
            tracker.clientSent(id)
        }
        #expect(tracker.serverReady(.idle) == .keep)
        tracker.clientSent(FrontendID.sync)
        #expect(tracker.serverReady(.idle) == .release)
    }

    @Test func copyDataDoesNotNeedASync() {
        var tracker = TransactionTracker(poolMode: .transaction)
        tracker.clientSent(FrontendID.query)
        for id in [FrontendID.copyData, FrontendID.copyData, FrontendID.copyDone] {
            tracker.clientSent(id)
        }
        #expect(tracker.serverReady(.idle) == .release)
    }

    /// libpq's pipeline COPY: Execute and Sync, then (after CopyInResponse) the data, CopyDone, libpq's own
    /// Sync and the pipeline's Sync. The server ignores the first Sync and answers the other two.
    @Test(arguments: [PoolMode.transaction, .statement])
    func aSyncSentBeforeCopyInBeganIsNeverAnswered(mode: PoolMode) {
        var tracker = TransactionTracker(poolMode: mode)
        for id in [P, B, D, E, S] { tracker.clientSent(id) }
        tracker.serverStartedCopyIn()
        #expect(!tracker.isIdle, "the COPY is under way")
        for id in [d, c, S, S] { tracker.clientSent(id) }
        #expect(tracker.serverReady(.idle) == .keep)
        #expect(tracker.serverReady(.idle) == .release)
        #expect(tracker.isIdle)
    }

    @Test func syncsDuringCopyDataAreNotCounted() {
        var tracker = TransactionTracker(poolMode: .transaction)
        for id in [P, B, E, UInt8(ascii: "H")] { tracker.clientSent(id) }
        tracker.serverStartedCopyIn()
        for id in [d, S, d, c] { tracker.clientSent(id) }
        #expect(!tracker.isIdle, "the extended-protocol transaction stays open until a Sync after the data")
        tracker.clientSent(S)
        #expect(tracker.serverReady(.idle) == .release)
    }

    @Test func aSimpleQueryCopyKeepsItsOneReadyForQuery() {
        var tracker = TransactionTracker(poolMode: .transaction)
        for id in [E, S] { tracker.clientSent(id) }
        #expect(tracker.serverReady(.idle) == .release)
        tracker.clientSent(Q)
        tracker.serverStartedCopyIn()
        for id in [d, c] { tracker.clientSent(id) }
        #expect(tracker.outstandingRequests == 1, "an earlier batch's Sync is not taken back")
        #expect(tracker.serverReady(.idle) == .release)
    }

    @Test func equatable() {
        var a = TransactionTracker(poolMode: .transaction)
        let b = TransactionTracker(poolMode: .transaction)
        #expect(a == b)
        a.clientSent(Q)
        #expect(a != b)
        _ = a.serverReady(.idle)
        #expect(a == b)
        #expect(TransactionTracker(poolMode: .session) != TransactionTracker(poolMode: .statement))
    }
}
