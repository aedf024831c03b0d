import PostgresWire

/// The requests a server connection still owes replies for, in the order they were sent, so that replies
/// to Lifeguard's own hidden messages are dropped and the replies Lifeguard gives in the server's place
/// (ParseComplete for a statement the server already has, CloseComplete for a client's Close) reach the
/// client exactly where PostgreSQL would have put them.
///
/// Follows PostgreSQL's rules: each request ends with a known reply; an error in an extended-query request
/// makes the server skip everything up to the next Sync, whose ReadyForQuery ends the error state.
public final class ReplyQueue {
    /// What the server does with a message, as far as replies go.
    public enum Request: Sendable {
        case parse, bind, describe, execute, close, sync, query, functionCall

        /// The request a client message makes, or nil when the server does not answer it on its own
        /// (Flush, CopyData, CopyDone, CopyFail belong to a request already counted).
        public init?(messageID: UInt8) {
            switch messageID {
            case FrontendID.parse: self = .parse
            case FrontendID.bind: self = .bind
            case FrontendID.describe: self = .describe
            case FrontendID.execute: self = .execute
            case FrontendID.close: self = .close
            case FrontendID.sync: self = .sync
            case FrontendID.query: self = .query
            case FrontendID.functionCall: self = .functionCall
            default: return nil
            }
        }

        /// Ends with ReadyForQuery, and errors inside it do not start the skip-to-Sync state.
        var endsWithReadyForQuery: Bool {
            switch self {
            case .sync, .query, .functionCall: return true
            default: return false
            }
        }

        func isEnded(by reply: UInt8) -> Bool {
            switch self {
            case .parse: return reply == BackendID.parseComplete
            case .bind: return reply == BackendID.bindComplete
            case .close: return reply == BackendID.closeComplete
            case .describe: return reply == BackendID.rowDescription || reply == BackendID.noData
            case .execute:
                return reply == BackendID.commandComplete || reply == BackendID.emptyQueryResponse
                    || reply == BackendID.portalSuspended
            case .sync, .query, .functionCall: return reply == BackendID.readyForQuery
            }
        }
    }

    public enum Entry {
        /// A client's request: its replies go to the client.
        case client(Request)
        /// A client's named Parse, sent as the shared statement: undone if it fails or is skipped.
        case clientParse(PreparedStatement, clientName: String)
        /// Lifeguard's own Parse or Close of a shared statement: its replies are dropped.
        case hidden(Request, PreparedStatement)
        /// A client's request Lifeguard answers itself with an empty reply of this id.
        case synthetic(UInt8)
    }

    public enum Disposition: Equatable {
        case forward, drop
    }

    public enum PushOutcome: Equatable {
        case queued
        /// A synthetic reply with nothing before it: write it to the client now.
        case answerNow
        /// The server is skipping messages until Sync after an error: it will not run this one.
        case skipped
    }

    public enum Event {
        /// Write this empty reply to the client, right after the message just handled.
        case synthesize(UInt8)
        /// A Parse or Close that failed (`skipped` false) or that the server skipped after an earlier error.
        case undone(Entry, skipped: Bool)
    }

    /// One queued request, as plain values: the hot path reads and pops these without touching the
    /// statements and names that Parse and Close entries carry (kept apart in `payloads`).
    struct Slot {
        enum Kind: UInt8 { case client, clientParse, hidden, synthetic }
        var kind: Kind
        /// nil for a synthetic entry (the server never sees it).
        var request: Request?
        /// The empty reply of a synthetic entry.
        var reply: UInt8
    }

    private var slots = Ring<Slot>()
    /// The `.clientParse` and `.hidden` entries, in queue order.
    private var payloads = Ring<Entry>()
    private var events = Ring<Event>()
    /// An extended-query error arrived with no Sync queued: the server skips until the next Sync.
    private var skippingUntilSync = false

    public init() {}

    public var isEmpty: Bool { slots.isEmpty }

    /// Requests still owed a reply (server or synthetic).
    public var count: Int { slots.count }

    /// The server is skipping messages until the next Sync: anything Lifeguard adds now would be skipped.
    public var isSkippingUntilSync: Bool { skippingUntilSync }

    /// A request was sent to the server (or, for `.synthetic`, will be answered by Lifeguard).
    public func push(_ entry: Entry) -> PushOutcome {
        if skippingUntilSync {
            guard case .client(.sync) = entry else { return .skipped }
            skippingUntilSync = false
        }
        switch entry {
        case .client(let request):
            slots.append(Slot(kind: .client, request: request, reply: 0))
        case .clientParse:
            slots.append(Slot(kind: .clientParse, request: .parse, reply: 0))
            payloads.append(entry)
        case .hidden(let request, _):
            slots.append(Slot(kind: .hidden, request: request, reply: 0))
            payloads.append(entry)
        case .synthetic(let reply):
            if slots.isEmpty { return .answerNow }
            slots.append(Slot(kind: .synthetic, request: nil, reply: reply))
        }
        return .queued
    }

    /// The next thing to do after `receive`, until nil.
    public func nextEvent() -> Event? {
        events.popFirst()
    }

    /// The server sent a message with `id`: whether the client gets it. Events may follow.
    public func receive(_ id: UInt8) -> Disposition {
        switch id {
        case BackendID.noticeResponse, BackendID.notification, BackendID.parameterStatus:
            return .forward
        case BackendID.readyForQuery:
            while let slot = slots.first {
                let endsHere = slot.request?.endsWithReadyForQuery == true
                popFirst(undoing: !endsHere, skipped: true)
                if endsHere { break }
            }
            skippingUntilSync = false
            answerSynthetics()
            return .forward
        case BackendID.errorResponse:
            guard let head = slots.first else { return .forward }
            guard let request = head.request, !request.endsWithReadyForQuery else { return disposition(of: head) }
            // Lifeguard's hidden Parse failing tells the client why its Bind or Describe will fail too.
            let disposition: Disposition = head.kind == .hidden && request == .close ? .drop : .forward
            popFirst(undoing: true, skipped: false)
            while let next = slots.first, next.request?.endsWithReadyForQuery != true {
                popFirst(undoing: true, skipped: true)
            }
            if slots.isEmpty { skippingUntilSync = true }
            return disposition
        default:
            guard let head = slots.first else { return .forward }
            if let request = head.request, request.isEnded(by: id) {
                popFirst(undoing: false, skipped: false)
                answerSynthetics()
            }
            return disposition(of: head)
        }
    }

    /// True when the next message with `id` would be dropped (for a header split across reads).
    public func wouldDrop(_ id: UInt8) -> Bool {
        guard let head = slots.first else { return false }
        switch id {
        case BackendID.noticeResponse, BackendID.notification, BackendID.parameterStatus, BackendID.readyForQuery:
            return false
        case BackendID.errorResponse:
            return head.kind == .hidden && head.request == .close
        default:
            return disposition(of: head) == .drop
        }
    }

    private func disposition(of slot: Slot) -> Disposition {
        slot.kind == .hidden ? .drop : .forward
    }

    /// Removes the head request; a Parse or Close of a statement is reported as undone when `undoing`.
    private func popFirst(undoing: Bool, skipped: Bool) {
        let slot = slots.removeFirst()
        switch slot.kind {
        case .clientParse, .hidden:
            let entry = payloads.removeFirst()
            if undoing { events.append(.undone(entry, skipped: skipped)) }
        case .client, .synthetic:
            break
        }
    }

    private func answerSynthetics() {
        while let head = slots.first, head.kind == .synthetic {
            slots.removeFirst()
            events.append(.synthesize(head.reply))
        }
    }
}
