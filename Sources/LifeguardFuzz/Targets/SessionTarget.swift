import LifeguardCore
import NIOCore
import PostgresWire

/// The pure pieces of a client session in transaction or statement mode with shared prepared statements:
/// client bytes cut by MessageSplitter with ClientSession's verdicts, TransactionTracker deciding releases
/// (gated on the splitter's boundary, as ClientSession gates them), ReplyQueue matching a model PostgreSQL's
/// replies. The input is a script of client writes, deliveries of some of the written bytes, and server
/// steps. Checked: the splitter's pieces and boundary flag against the bytes fed, at most one message held,
/// and a server released only between client messages, with nothing in flight and no transaction open.
func fuzzSession(_ data: [UInt8]) {
    var input = FuzzInput(data)
    let flags = input.byte()
    let mode: PoolMode = [.transaction, .statement, .session][Int(flags % 3)]
    let maxLength = flags & 8 == 0 ? Int(Int32.max) : 64 + Int(input.byte())
    let session = SessionModel(mode: mode, sharesUnnamed: flags & 4 != 0, maxLength: maxLength)
    while !input.isAtEnd, !session.closed {
        switch input.byte() % 8 {
        case 0, 1, 2: session.stream += clientMessage(&input)
        case 3, 4: session.deliver(input.int(in: 1...300))
        case 5, 6: session.serverStep(&input)
        default: session.stream += input.field()  // anything at all, headers included
        }
    }
    // Everything written arrives and the server answers all it can.
    session.deliver(session.stream.count - session.fed)
    var steps = 0
    while !session.closed, !(session.inbox.isEmpty && session.outbox.isEmpty), steps < 10_000 {
        session.serverStep(&input)
        steps += 1
    }
}

private let statementNames = ["", "s1", "s2", "a_statement_name_long_enough_to_grow_the_renamed_bind"]
private let clientIDs: [UInt8] = [
    FrontendID.query, FrontendID.parse, FrontendID.bind, FrontendID.describe, FrontendID.execute, FrontendID.close,
    FrontendID.sync, FrontendID.flush, FrontendID.functionCall, FrontendID.copyData, FrontendID.terminate,
]

/// A client message: mostly well formed, sometimes with a length field that lies.
private func clientMessage(_ input: inout FuzzInput) -> [UInt8] {
    var id = clientIDs[Int(input.byte()) % clientIDs.count]
    if id == FrontendID.terminate, input.byte() % 4 != 0 { id = FrontendID.sync }
    let name = Array(statementNames[Int(input.byte()) % statementNames.count].utf8)
    var body: [UInt8] = []
    switch id {
    case FrontendID.query:
        body = Array((input.bool() ? "BEGIN" : "SELECT 1").utf8) + [0]
    case FrontendID.parse:
        body = name + [0] + Array("SELECT $1".utf8) + [0, 0, 0]
    case FrontendID.bind:
        body = (input.bool() ? Array("p".utf8) : []) + [0] + name + [0] + [0, 0, 0, 1]
        body += Array(repeating: 0x41, count: input.int(in: 0...400))
    case FrontendID.describe, FrontendID.close:
        body = [input.bool() ? ExtendedQueryMessage.statementKind : UInt8(ascii: "P")] + name + [0]
    case FrontendID.execute:
        body = [0, 0, 0, 0, 0]
    case FrontendID.sync, FrontendID.flush, FrontendID.terminate:
        break
    default:
        body = input.field()
    }
    var length = Int32(body.count + 4)
    switch input.byte() {
    case 0xFF: length = Int32.max - Int32(input.byte())
    case 0xFE: length = Int32(input.byte()) - 8
    case 0xFD: length += Int32(input.byte())
    default: break
    }
    return [id] + withUnsafeBytes(of: length.bigEndian, Array.init) + body
}

private struct SessionClosed: Error {}

private final class SessionModel {
    static let wholeIDs = MessageIDSet([
        FrontendID.parse, FrontendID.bind, FrontendID.describe, FrontendID.close, FrontendID.terminate,
    ])
    static let acceptedIDs = MessageIDSet([
        FrontendID.query, FrontendID.parse, FrontendID.bind, FrontendID.describe, FrontendID.execute,
        FrontendID.close, FrontendID.sync, FrontendID.flush, FrontendID.functionCall, FrontendID.copyData,
        FrontendID.copyDone, FrontendID.copyFail, FrontendID.terminate, FrontendID.password,
    ])

    let sharesUnnamed: Bool
    let maxLength: Int
    var splitter: MessageSplitter
    var tracker: TransactionTracker
    let replies = ReplyQueue()
    var oracle: SplitterOracle
    /// Everything the client wrote; `fed` bytes of it have reached the splitter.
    var stream: [UInt8] = []
    var fed = 0
    var closed = false
    /// The client's statement names (ClientSession's `statements`), and the name a judged Bind head names.
    var statements: Set<String> = []
    var headStatementName = ""
    var renamedHeads = 0

    // The model server: requests received in order, replies not yet delivered, its protocol state.
    var inbox: [UInt8] = []
    var outbox: [(id: UInt8, status: TransactionStatus?)] = []
    var skippingUntilSync = false
    var status = TransactionStatus.idle

    init(mode: PoolMode, sharesUnnamed: Bool, maxLength: Int) {
        self.sharesUnnamed = sharesUnnamed
        self.maxLength = maxLength
        splitter = MessageSplitter(wholeIDs: Self.wholeIDs, maxMessageLength: maxLength)
        tracker = TransactionTracker(poolMode: mode)
        oracle = SplitterOracle(stream: [], expected: [])
    }

    // MARK: Client side

    func deliver(_ count: Int) {
        let count = min(count, stream.count - fed)
        guard count > 0, !closed else { return }
        let read = makeRead(stream[fed..<fed + count], junk: count & 1)
        fed += count
        let (expected, _) = referenceWalk(stream[...], maxLength: maxLength)
        oracle.refresh(stream: stream[...], expected: expected, fed: fed)
        do {
            try splitter.split(read) { piece in try self.handle(piece) }
        } catch {
            // A protocol error, an unknown statement or Terminate: the session ends here.
            closed = true
            return
        }
        check(!oracle.stopped, "split went on after a stop")
        oracle.checkAfterRead(boundary: splitter.isAtMessageBoundary)
    }

    private func handle(_ piece: MessageSplitter.Piece) throws -> MessageSplitter.Verdict {
        var decided: MessageSplitter.Verdict = .pass
        switch piece {
        case .whole(let id, let message):
            if id == FrontendID.terminate { decided = .stop }
            else if let verdict = verdict(on: message, id: id) { decided = verdict }
            else { throw SessionClosed() }  // PoolerError.badPacket
        case .incomplete(let id, let partial):
            decided = verdict(on: partial, id: id) ?? .take
        default:
            break
        }
        let verdict = oracle.verdict(for: piece) { _ in decided }
        switch piece {
        case .whole(let id, _):
            if verdict == .stop { throw SessionClosed() }
            if verdict == .pass { try accept(id, request: .client) }
        case .ended(let id):
            try accept(id, request: .client)
        case .taken(let id, let message):
            try sendTaken(id, message)
        case .head(_, let head):
            try sendBindHead(head)
        case .raw, .incomplete:
            break
        }
        return verdict
    }

    /// ClientSession.verdict: statements are mapped when named (or unnamed, when shared and already parsed).
    private func verdict(on message: ByteBuffer, id: UInt8) -> MessageSplitter.Verdict? {
        if id == FrontendID.bind {
            guard let head = ExtendedQueryMessage.bindHead(message) else { return nil }
            guard maps(head.statement, id: id) else { return .pass }
            headStatementName = head.statement
            return .replaceHead(count: head.length)
        }
        switch ExtendedQueryMessage.statementReference(message, id: id) {
        case .undecided: return nil
        case .portal: return .pass
        case .statement(let name): return maps(name, id: id) ? .take : .pass
        }
    }

    private func maps(_ name: String, id: UInt8) -> Bool {
        !name.isEmpty || (sharesUnnamed && (id == FrontendID.parse || statements.contains("")))
    }

    enum RequestKind { case client, synthetic }

    private func accept(_ id: UInt8, request kind: RequestKind) throws {
        guard Self.acceptedIDs.contains(id) else { throw SessionClosed() }
        if id == FrontendID.query, sharesUnnamed { statements.remove("") }
        tracker.clientSent(id)
        guard let request = ReplyQueue.Request(messageID: id) else {
            inbox.append(id)  // Flush, COPY data: the server gets them, no reply of their own
            return
        }
        switch kind {
        case .client:
            _ = replies.push(.client(request))
            inbox.append(id)
        case .synthetic:
            // Lifeguard answers a client's Close itself; the server never sees it.
            _ = replies.push(.synthetic(BackendID.closeComplete))
        }
    }

    private func sendTaken(_ id: UInt8, _ message: ByteBuffer) throws {
        switch id {
        case FrontendID.parse:
            guard let (name, _) = ExtendedQueryMessage.parse(message) else { throw SessionClosed() }
            guard name.isEmpty || !statements.contains(name) else { throw SessionClosed() }  // in use
            try accept(id, request: .client)
            statements.insert(name)
        case FrontendID.close:
            guard let (_, name) = ExtendedQueryMessage.target(message) else { throw SessionClosed() }
            try accept(id, request: .synthetic)
            statements.remove(name)
        default:
            guard let (_, name) = ExtendedQueryMessage.target(message) else { throw SessionClosed() }
            guard statements.contains(name) else { throw SessionClosed() }  // does not exist
            try accept(id, request: .client)
        }
    }

    /// The head is renamed as ServerConnection renames it; the Bind counts once its last byte is seen.
    private func sendBindHead(_ head: ByteBuffer) throws {
        guard statements.contains(headStatementName) else { throw SessionClosed() }
        renamedHeads += 1
        let serverName = "LG_\(renamedHeads)_" + String(repeating: "x", count: renamedHeads % 7 * 9)
        var renamed = ByteBuffer()
        // Refused (nothing written) only when the renamed length would not fit the length field.
        if renamed.writeBindHead(head, renamingStatementTo: serverName) {
            check(ExtendedQueryMessage.bindHead(renamed)?.statement == serverName, "renamed Bind head does not name \(serverName)")
        } else {
            check(renamed.readableBytes == 0, "a refused rename wrote bytes")
        }
    }

    // MARK: Server side

    func serverStep(_ input: inout FuzzInput) {
        guard !closed else { return }
        if !outbox.isEmpty, inbox.isEmpty || input.bool() {
            let reply = outbox.removeFirst()
            receive(reply.id, status: reply.status)
        } else if !inbox.isEmpty {
            process(inbox.removeFirst(), &input)
        }
    }

    /// PostgreSQL's answer to one message: errors in extended-query messages skip to the next Sync.
    private func process(_ id: UInt8, _ input: inout FuzzInput) {
        let choice = input.byte()
        // A NOTICE while running a request (not after the last ReadyForQuery, which is not modelled).
        if input.byte() % 16 == 0, ReplyQueue.Request(messageID: id) != nil, !skippingUntilSync {
            outbox.append((BackendID.noticeResponse, nil))
        }
        if skippingUntilSync {
            guard id == FrontendID.sync else { return }
            skippingUntilSync = false
            if status == .inTransaction { status = .failed }
            outbox.append((BackendID.readyForQuery, status))
            return
        }
        let statuses: [TransactionStatus] = [.idle, .inTransaction, .failed, .idle]
        switch id {
        case FrontendID.query, FrontendID.functionCall:
            outbox.append((choice % 5 == 0 ? BackendID.errorResponse
                : id == FrontendID.query ? BackendID.commandComplete : BackendID.functionCallResponse, nil))
            status = statuses[Int(choice >> 4) % statuses.count]
            outbox.append((BackendID.readyForQuery, status))
        case FrontendID.sync:
            if choice & 0x80 != 0 { status = statuses[Int(choice >> 4) % statuses.count] }
            outbox.append((BackendID.readyForQuery, status))
        case FrontendID.parse, FrontendID.bind, FrontendID.describe, FrontendID.execute, FrontendID.close:
            if choice % 8 == 0 {
                outbox.append((BackendID.errorResponse, nil))
                skippingUntilSync = true
                return
            }
            switch id {
            case FrontendID.parse: outbox.append((BackendID.parseComplete, nil))
            case FrontendID.bind: outbox.append((BackendID.bindComplete, nil))
            case FrontendID.describe: outbox.append((choice & 1 == 0 ? BackendID.rowDescription : BackendID.noData, nil))
            case FrontendID.close: outbox.append((BackendID.closeComplete, nil))
            default:
                let executeEnds = [BackendID.commandComplete, BackendID.emptyQueryResponse, BackendID.portalSuspended]
                outbox.append((executeEnds[Int(choice >> 1) % 3], nil))
            }
        default:
            break  // Flush, COPY data outside COPY: nothing comes back
        }
    }

    /// A server message reaches the session: ReplyQueue routes it, ReadyForQuery goes to the tracker.
    private func receive(_ id: UInt8, status: TransactionStatus?) {
        _ = replies.receive(id)
        while replies.nextEvent() != nil {}
        guard id == BackendID.readyForQuery, let status else { return }
        var decision = tracker.serverReady(status)
        // ClientSession.serverReady: never release in the middle of a client message.
        if decision == .release, !splitter.isAtMessageBoundary { decision = .keep }
        let owedReadies = outbox.filter { $0.id == BackendID.readyForQuery }.count
            + inbox.filter { $0 == FrontendID.sync }.count
        check(tracker.outstandingRequests >= owedReadies,
              "tracker expects \(tracker.outstandingRequests) ReadyForQuery, the server still owes \(owedReadies)")
        switch decision {
        case .keep:
            break
        case .release:
            check(oracle.isAtMessageBoundary, "released with \(fed - oracle.tailStart) bytes of a client message read")
            check(tracker.isIdle && status == .idle && self.status == .idle && !skippingUntilSync,
                  "released in a transaction (status \(status))")
            let requests = inbox.filter { ReplyQueue.Request(messageID: $0) != nil }
            check(requests.isEmpty && outbox.isEmpty, "released with requests \(requests) and replies \(outbox.map(\.id)) in flight")
            check(replies.isEmpty, "released with replies still expected")
            // The server goes back to the pool: what is left for it (Flush) was already answered.
            inbox.removeAll()
        case .transactionBlockInStatementMode:
            check(status != .idle, "statement-mode error on an idle ReadyForQuery")
            closed = true
        }
    }
}
