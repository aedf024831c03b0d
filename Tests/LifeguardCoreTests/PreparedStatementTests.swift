import NIOCore
import PostgresWire
import Testing

@testable import LifeguardCore

private func definition(_ sql: String) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeNullTerminatedString(sql)
    buffer.writeInteger(Int16(0))
    return buffer
}

private let parseComplete = BackendID.parseComplete
private let closeComplete = BackendID.closeComplete

/// Drains the queue's events after one `receive`, as the server connection does.
private func events(_ queue: ReplyQueue) -> [String] {
    var out: [String] = []
    while let event = queue.nextEvent() {
        switch event {
        case .synthesize(let id): out.append("answer \(Character(Unicode.Scalar(id)))")
        case .undone(.clientParse(let statement, let name), let skipped):
            out.append("undo parse \(name)=\(statement.serverName)\(skipped ? " (skipped)" : "")")
        case .undone(.hidden(let request, let statement), let skipped):
            out.append("undo hidden \(request) \(statement.serverName)\(skipped ? " (skipped)" : "")")
        case .undone: out.append("undo other")
        }
    }
    return out
}

private func id(_ character: Character) -> UInt8 { character.asciiValue! }

@Suite struct PreparedStatementRegistryTests {
    @Test func sameDefinitionIsOneStatementUntilNobodyHoldsIt() {
        let registry = PreparedStatementRegistry()
        var first: PreparedStatement? = registry.statement(for: definition("SELECT 1"))
        let second = registry.statement(for: definition("SELECT 1"))
        let other = registry.statement(for: definition("SELECT 2"))
        #expect(first === second)
        #expect(first !== other)
        #expect(first?.serverName == "LIFEGUARD_1" && other.serverName == "LIFEGUARD_2")
        #expect(registry.count == 2)
        first = nil
        #expect(registry.count == 2, "still held")
        _ = consume second
        #expect(registry.count == 1)
        #expect(registry.statement(for: definition("SELECT 1")).serverName == "LIFEGUARD_3")
    }

    @Test func parseMessageCarriesTheServerName() {
        let registry = PreparedStatementRegistry()
        let statement = registry.statement(for: definition("SELECT 1"))
        #expect(ExtendedQueryMessage.parse(statement.parseMessage)?.name == "LIFEGUARD_1")
        #expect(ExtendedQueryMessage.parse(statement.parseMessage)?.definition == definition("SELECT 1"))
    }
}

@Suite struct ServerStatementCacheTests {
    @Test func leastRecentlyUsedGoesFirst() {
        let registry = PreparedStatementRegistry()
        let statements = (1...4).map { registry.statement(for: definition("SELECT \($0)")) }
        var cache = ServerStatementCache()
        #expect(cache.insert(statements[0], capacity: 3).isEmpty)
        #expect(cache.insert(statements[1], capacity: 3).isEmpty)
        #expect(cache.insert(statements[2], capacity: 3).isEmpty)
        let firstWasThere = cache.use(statements[0])
        #expect(firstWasThere)
        let evicted = cache.insert(statements[3], capacity: 3)
        #expect(evicted.count == 1 && evicted[0] === statements[1])
        let evictedIsThere = cache.use(statements[1])
        #expect(!evictedIsThere && cache.count == 3)
        cache.closeSkipped(statements[1])
        #expect(cache.count == 4, "a statement the server still has is put back even above capacity")
        cache.removeAll()
        #expect(cache.count == 0)
    }

    /// A lowered max_prepared_statements (console SET) shrinks the cache to it at the next insert.
    @Test func aLoweredCapacityEvictsDownToItAtTheNextInsert() {
        let registry = PreparedStatementRegistry()
        let statements = (1...6).map { registry.statement(for: definition("SELECT \($0)")) }
        var cache = ServerStatementCache()
        for statement in statements.prefix(5) { #expect(cache.insert(statement, capacity: 5).isEmpty) }
        let evicted = cache.insert(statements[5], capacity: 2)
        #expect(evicted.map(\.id) == statements.prefix(4).map(\.id), "oldest first")
        #expect(cache.count == 2)
        #expect(cache.insert(statements[0], capacity: 0).count == 2)
        #expect(cache.count == 1, "at least the statement just prepared stays")
    }
}

extension ServerStatementCacheTests {
    /// In one skipped run (an error, then everything up to Sync), a skipped Parse removes a statement it
    /// would have created, but not one whose skipped Close left it on the server; ReadyForQuery ends the run.
    @Test func aSkippedParseKeepsAStatementWhoseCloseWasSkippedToo() {
        let registry = PreparedStatementRegistry()
        let kept = registry.statement(for: definition("SELECT 'kept'"))
        let new = registry.statement(for: definition("SELECT 'new'"))
        var cache = ServerStatementCache()
        _ = cache.insert(kept, capacity: 2)
        cache.remove(kept)  // evicted: its Close went out
        cache.closeSkipped(kept)
        _ = cache.insert(kept, capacity: 2)  // prepared again later in the same pipeline
        _ = cache.insert(new, capacity: 2)
        cache.parseUndone(kept, skipped: true)
        cache.parseUndone(new, skipped: true)
        let keptIsThere = cache.use(kept)
        let newIsThere = cache.use(new)
        #expect(keptIsThere, "the server still has it")
        #expect(!newIsThere, "its Parse was skipped")

        cache.readyForQuery()
        cache.parseUndone(kept, skipped: true)
        let keptAfterSync = cache.use(kept)
        #expect(!keptAfterSync, "a later run's skipped Parse removes it")
    }
}

@Suite struct ReplyQueueTests {
    private let registry = PreparedStatementRegistry()

    @Test func hiddenParseReplyIsDroppedAndTheRestForwarded() {
        let statement = registry.statement(for: definition("SELECT 1"))
        let queue = ReplyQueue()
        #expect(queue.push(.hidden(.parse, statement)) == .queued)
        #expect(queue.push(.client(.bind)) == .queued)
        #expect(queue.push(.client(.execute)) == .queued)
        #expect(queue.push(.client(.sync)) == .queued)
        #expect(queue.wouldDrop(parseComplete))
        #expect(queue.receive(parseComplete) == .drop)
        #expect(!queue.wouldDrop(id("2")))
        for reply in ["2", "D", "C", "Z"] as [Character] { #expect(queue.receive(id(reply)) == .forward) }
        #expect(queue.isEmpty)
    }

    @Test func syntheticRepliesGoWherePostgreSQLWouldPutThem() {
        let queue = ReplyQueue()
        #expect(queue.push(.synthetic(parseComplete)) == .answerNow, "nothing before it")
        #expect(queue.push(.client(.bind)) == .queued)
        #expect(queue.push(.synthetic(closeComplete)) == .queued)
        #expect(queue.push(.client(.sync)) == .queued)
        #expect(queue.push(.synthetic(parseComplete)) == .queued)
        #expect(queue.push(.client(.sync)) == .queued)
        #expect(queue.receive(id("2")) == .forward)
        #expect(events(queue) == ["answer 3"], "right after BindComplete")
        #expect(queue.receive(id("Z")) == .forward)
        #expect(events(queue) == ["answer 1"], "after the first ReadyForQuery")
        #expect(queue.receive(id("Z")) == .forward)
        #expect(queue.isEmpty)
    }

    @Test func errorSkipsToSyncAndUndoesParses() {
        let first = registry.statement(for: definition("SELECT 1"))
        let second = registry.statement(for: definition("SELECT 2"))
        let queue = ReplyQueue()
        _ = queue.push(.client(.bind))
        _ = queue.push(.clientParse(first, clientName: "a"))
        _ = queue.push(.hidden(.parse, second))
        _ = queue.push(.synthetic(parseComplete))
        _ = queue.push(.client(.sync))
        #expect(queue.receive(BackendID.errorResponse) == .forward)
        #expect(events(queue) == ["undo parse a=LIFEGUARD_1 (skipped)", "undo hidden parse LIFEGUARD_2 (skipped)"])
        #expect(queue.receive(id("Z")) == .forward)
        #expect(events(queue).isEmpty, "the skipped synthetic reply is never given")
        #expect(queue.isEmpty)
    }

    @Test func errorWithoutSyncQueuedSkipsWhatFollowsUntilSync() {
        let statement = registry.statement(for: definition("SELECT 1"))
        let queue = ReplyQueue()
        _ = queue.push(.clientParse(statement, clientName: "a"))
        #expect(queue.receive(BackendID.errorResponse) == .forward)
        #expect(events(queue) == ["undo parse a=LIFEGUARD_1"])
        #expect(queue.isSkippingUntilSync)
        #expect(queue.push(.client(.bind)) == .skipped)
        #expect(queue.push(.synthetic(closeComplete)) == .skipped)
        #expect(queue.push(.client(.sync)) == .queued)
        #expect(!queue.isSkippingUntilSync)
        #expect(queue.receive(id("Z")) == .forward)
        #expect(queue.isEmpty)
    }

    @Test func errorsInsideSimpleQueriesDoNotSkip() {
        let queue = ReplyQueue()
        _ = queue.push(.client(.query))
        _ = queue.push(.synthetic(closeComplete))
        #expect(queue.receive(BackendID.errorResponse) == .forward)
        #expect(!queue.isSkippingUntilSync)
        #expect(queue.receive(id("Z")) == .forward)
        #expect(events(queue) == ["answer 3"])
    }

    @Test func hiddenCloseIsDroppedEvenWhenItFails() {
        let statement = registry.statement(for: definition("SELECT 1"))
        let queue = ReplyQueue()
        _ = queue.push(.hidden(.close, statement))
        _ = queue.push(.client(.sync))
        #expect(queue.wouldDrop(BackendID.errorResponse))
        #expect(queue.receive(BackendID.errorResponse) == .drop)
        #expect(events(queue) == ["undo hidden close LIFEGUARD_1"])
    }

    @Test func describeOfAStatementEndsAtItsRowDescription() {
        let queue = ReplyQueue()
        _ = queue.push(.client(.describe))
        _ = queue.push(.synthetic(parseComplete))
        #expect(queue.receive(BackendID.parameterDescription) == .forward)
        #expect(events(queue).isEmpty)
        #expect(queue.receive(BackendID.noData) == .forward)
        #expect(events(queue) == ["answer 1"])
    }

    @Test func asynchronousMessagesPassWithoutEndingAnything() {
        let statement = registry.statement(for: definition("SELECT 1"))
        let queue = ReplyQueue()
        _ = queue.push(.hidden(.parse, statement))
        for message in [BackendID.noticeResponse, BackendID.parameterStatus, BackendID.notification] {
            #expect(!queue.wouldDrop(message))
            #expect(queue.receive(message) == .forward)
        }
        #expect(queue.receive(parseComplete) == .drop)
        #expect(queue.isEmpty)
    }
}
