import CLibPQ
import Foundation

/// A thin libpq client: the real PostgreSQL client library, as applications use it.
/// Unchecked: each test drives a connection from one thread at a time; only `cancel()` (which libpq makes
/// safe to call from another thread) crosses over.
final class PGConnection: @unchecked Sendable {
    let handle: OpaquePointer

    struct Failure: Error, CustomStringConvertible {
        var message: String
        var sqlState: String?
        var description: String { "\(sqlState ?? "-----"): \(message)" }
    }

    /// Connects with a libpq connection string; throws libpq's error text.
    init(_ conninfo: String) throws {
        guard let handle = PQconnectdb(conninfo) else { throw Failure(message: "out of memory") }
        guard PQstatus(handle) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(handle))
            PQfinish(handle)
            throw Failure(message: message.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        self.handle = handle
    }

    deinit { PQfinish(handle) }

    /// Runs `sql` with the simple query protocol and returns the last result's rows as text.
    @discardableResult
    func query(_ sql: String) throws -> [[String?]] {
        guard let result = PQexec(handle, sql) else { throw lastFailure() }
        defer { PQclear(result) }
        return try rows(of: result)
    }

    /// Runs `sql` with the extended protocol (Parse/Bind/Execute/Sync) and text parameters.
    @discardableResult
    func query(_ sql: String, parameters: [String]) throws -> [[String?]] {
        let result = withParameters(parameters) {
            PQexecParams(handle, sql, Int32(parameters.count), nil, $0, nil, nil, 0)
        }
        guard let result else { throw lastFailure() }
        defer { PQclear(result) }
        return try rows(of: result)
    }

    /// The column names of `sql`'s result, in order.
    func columns(_ sql: String) throws -> [String] {
        guard let result = PQexec(handle, sql) else { throw lastFailure() }
        defer { PQclear(result) }
        guard PQresultStatus(result) == PGRES_TUPLES_OK else { throw failure(of: result) }
        return (0..<PQnfields(result)).map { String(cString: PQfname(result, $0)) }
    }

    /// Rows of `sql` as dictionaries keyed by column name.
    func records(_ sql: String) throws -> [[String: String?]] {
        let names = try columns(sql)
        return try query(sql).map { Dictionary(uniqueKeysWithValues: zip(names, $0)) }
    }

    /// The first column of the first row.
    func value(_ sql: String) throws -> String? {
        try query(sql).first?.first ?? nil
    }

    private func rows(of result: OpaquePointer) throws -> [[String?]] {
        switch PQresultStatus(result) {
        case PGRES_TUPLES_OK, PGRES_COMMAND_OK, PGRES_EMPTY_QUERY:
            break
        default:
            throw failure(of: result)
        }
        let rowCount = PQntuples(result)
        let columnCount = PQnfields(result)
        return (0..<rowCount).map { row in
            (0..<columnCount).map { column in
                PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
            }
        }
    }

    func failure(of result: OpaquePointer) -> Failure {
        var message = String(cString: PQresultErrorMessage(result)).trimmingCharacters(in: .whitespacesAndNewlines)
        // When the server sends a FATAL and closes, libpq's last result only says the connection was lost;
        // the FATAL text is in the connection's accumulated message.
        let connectionMessage = String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines)
        if !connectionMessage.isEmpty, !message.contains(connectionMessage) {
            message += "\n" + connectionMessage
        }
        let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
        return Failure(message: message, sqlState: state)
    }

    func lastFailure() -> Failure {
        Failure(message: String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    var backendPID: String? { try? value("SELECT pg_backend_pid()") }

    /// Sends a CancelRequest for the running query, as psql's Ctrl-C does.
    func cancel() -> Bool {
        guard let cancel = PQgetCancel(handle) else { return false }
        defer { PQfreeCancel(cancel) }
        var errorBuffer = [CChar](repeating: 0, count: 256)
        return PQcancel(cancel, &errorBuffer, 256) == 1
    }

    /// COPY ... FROM STDIN with `lines` as the data; with `failure`, the client ends it with CopyFail instead
    /// of CopyDone.
    func copyIn(_ sql: String, lines: [String], failure failMessage: String? = nil) throws {
        guard let start = PQexec(handle, sql) else { throw lastFailure() }
        let status = PQresultStatus(start)
        PQclear(start)
        guard status == PGRES_COPY_IN else { throw Failure(message: "COPY did not start: \(status)") }
        for line in lines {
            let bytes = Array((line + "\n").utf8)
            guard PQputCopyData(handle, bytes.map { CChar(bitPattern: $0) }, Int32(bytes.count)) == 1 else {
                throw lastFailure()
            }
        }
        guard PQputCopyEnd(handle, failMessage) == 1 else { throw lastFailure() }
        while let result = PQgetResult(handle) {
            defer { PQclear(result) }
            if PQresultStatus(result) != PGRES_COMMAND_OK { throw failure(of: result) }
        }
    }

    /// COPY ... FROM STDIN as libpq's pipeline mode sends it: Execute and Sync before the COPY begins, then
    /// the data, CopyDone with libpq's own Sync, and the pipeline's Sync. Returns the command tag.
    func pipelinedCopyIn(_ sql: String, lines: [String]) throws -> String {
        guard PQenterPipelineMode(handle) == 1, PQsendQueryParams(handle, sql, 0, nil, nil, nil, nil, 0) == 1,
            PQpipelineSync(handle) == 1
        else { throw lastFailure() }
        func nextStatus() throws -> ExecStatusType? {
            guard let result = PQgetResult(handle) else { return nil }
            defer { PQclear(result) }
            let status = PQresultStatus(result)
            if status == PGRES_FATAL_ERROR { throw failure(of: result) }
            return status
        }
        guard try nextStatus() == PGRES_COPY_IN else { throw Failure(message: "COPY did not start") }
        for line in lines {
            let bytes = Array((line + "\n").utf8)
            guard PQputCopyData(handle, bytes.map { CChar(bitPattern: $0) }, Int32(bytes.count)) == 1 else {
                throw lastFailure()
            }
        }
        guard PQputCopyEnd(handle, nil) == 1, PQpipelineSync(handle) == 1 else { throw lastFailure() }
        guard let done = PQgetResult(handle) else { throw lastFailure() }
        let tag = String(cString: PQcmdStatus(done))
        PQclear(done)
        guard try nextStatus() == nil, try nextStatus() == PGRES_PIPELINE_SYNC, try nextStatus() == PGRES_PIPELINE_SYNC,
            PQexitPipelineMode(handle) == 1
        else { throw Failure(message: "unexpected results after the COPY") }
        return tag
    }

    /// COPY ... TO STDOUT; returns the lines.
    func copyOut(_ sql: String) throws -> [String] {
        guard let start = PQexec(handle, sql) else { throw lastFailure() }
        let status = PQresultStatus(start)
        PQclear(start)
        guard status == PGRES_COPY_OUT else { throw Failure(message: "COPY did not start: \(status)") }
        var lines: [String] = []
        while true {
            var buffer: UnsafeMutablePointer<CChar>?
            let length = PQgetCopyData(handle, &buffer, 0)
            if length == -1 { break }
            guard length >= 0, let buffer else { throw lastFailure() }
            lines.append(String(cString: buffer).trimmingCharacters(in: .newlines))
            PQfreemem(buffer)
        }
        while let result = PQgetResult(handle) {
            defer { PQclear(result) }
            if PQresultStatus(result) != PGRES_COMMAND_OK { throw failure(of: result) }
        }
        return lines
    }

    // MARK: Prepared statements and pipelines

    /// PQprepare: a named statement (Parse + Sync).
    func prepare(_ name: String, _ sql: String) throws {
        guard let result = PQprepare(handle, name, sql, 0, nil) else { throw lastFailure() }
        defer { PQclear(result) }
        _ = try rows(of: result)
    }

    /// PQexecPrepared with text parameters (Bind + Describe + Execute + Sync).
    @discardableResult
    func execPrepared(_ name: String, _ parameters: [String] = []) throws -> [[String?]] {
        let result = withParameters(parameters) { PQexecPrepared(handle, name, Int32(parameters.count), $0, nil, nil, 0) }
        guard let result else { throw lastFailure() }
        defer { PQclear(result) }
        return try rows(of: result)
    }

    /// PQdescribePrepared: the number of parameters the statement takes.
    func describePrepared(_ name: String) throws -> Int {
        guard let result = PQdescribePrepared(handle, name) else { throw lastFailure() }
        defer { PQclear(result) }
        _ = try rows(of: result)
        return Int(PQnparams(result))
    }

    enum PipelineStep {
        case prepare(name: String, sql: String)
        case execPrepared(name: String, parameters: [String])
        case query(sql: String, parameters: [String])
        case describePrepared(name: String)
        case sync
    }

    /// What one pipeline step gave: its rows, or its error's SQLSTATE, or that it was skipped after an
    /// earlier error (libpq's PGRES_PIPELINE_ABORTED), or a Sync point.
    enum PipelineOutcome: Equatable {
        case rows([[String?]])
        case error(String)
        case aborted
        case synced
        /// A Describe of a prepared statement: how many parameters it takes.
        case described(parameters: Int)
    }

    /// Sends every step in libpq's pipeline mode without waiting, then reads one outcome per step.
    func pipeline(_ steps: [PipelineStep]) throws -> [PipelineOutcome] {
        guard PQenterPipelineMode(handle) == 1 else { throw lastFailure() }
        for step in steps {
            let sent: Int32
            switch step {
            case .prepare(let name, let sql):
                sent = PQsendPrepare(handle, name, sql, 0, nil)
            case .execPrepared(let name, let parameters):
                sent = withParameters(parameters) {
                    PQsendQueryPrepared(handle, name, Int32(parameters.count), $0, nil, nil, 0)
                }
            case .query(let sql, let parameters):
                sent = withParameters(parameters) {
                    PQsendQueryParams(handle, sql, Int32(parameters.count), nil, $0, nil, nil, 0)
                }
            case .describePrepared(let name):
                sent = PQsendDescribePrepared(handle, name)
            case .sync:
                sent = PQpipelineSync(handle)
            }
            guard sent == 1 else { throw lastFailure() }
        }
        var outcomes: [PipelineOutcome] = []
        while outcomes.count < steps.count {
            guard let result = PQgetResult(handle) else { continue }  // NULL ends one step's results
            defer { PQclear(result) }
            var describing = false
            if case .describePrepared = steps[outcomes.count] { describing = true }
            switch PQresultStatus(result) {
            case PGRES_PIPELINE_SYNC: outcomes.append(.synced)
            case PGRES_PIPELINE_ABORTED: outcomes.append(.aborted)
            case PGRES_COMMAND_OK where describing:
                outcomes.append(.described(parameters: Int(PQnparams(result))))
            case PGRES_TUPLES_OK, PGRES_COMMAND_OK: outcomes.append(.rows(try rows(of: result)))
            default: outcomes.append(.error(failure(of: result).sqlState ?? "?"))
            }
            if PQstatus(handle) != CONNECTION_OK { throw lastFailure() }
        }
        guard PQexitPipelineMode(handle) == 1 else { throw lastFailure() }
        return outcomes
    }

    private func withParameters<T>(_ parameters: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>?) -> T) -> T {
        var cStrings = parameters.map { strdup($0) }
        defer { cStrings.forEach { free($0) } }
        return cStrings.withUnsafeMutableBufferPointer { buffer in
            buffer.withMemoryRebound(to: UnsafePointer<CChar>?.self) { body($0.baseAddress) }
        }
    }
}
