import Dispatch
import Foundation
import Glibc
import NIOConcurrencyHelpers
import Testing

/// Every integration suite nests in this one, so they run one test at a time: they share one PostgreSQL
/// cluster, and some tests count its backends.
@Suite(.serialized, .enabled(if: TestEnvironment.isAvailable))
struct IntegrationTests {}

/// The throwaway PostgreSQL cluster that scripts/test.sh starts, and the Lifeguard binary it built.
enum TestEnvironment {
    static let postgresPort = ProcessInfo.processInfo.environment["LIFEGUARD_TEST_PGPORT"].flatMap(Int.init)
    static let postgresSocketDirectory = ProcessInfo.processInfo.environment["LIFEGUARD_TEST_PGDIR"]
    static let binary = ProcessInfo.processInfo.environment["LIFEGUARD_BINARY"] ?? ".build/debug/lifeguard"
    /// Engine threads of every Lifeguard the tests start, unless a test sets its own: scripts/test.sh runs
    /// the suite once more with 2, so that everything is also checked across threads.
    static let threads = ProcessInfo.processInfo.environment["LIFEGUARD_TEST_THREADS"] ?? "1"

    /// Integration tests need the cluster; scripts/test.sh always provides it.
    static var isAvailable: Bool { postgresPort != nil && postgresSocketDirectory != nil }

    /// The CA of the cluster's TLS certificate, when it runs with TLS (scripts/test.sh starts it so).
    static var postgresCA: String? {
        guard let directory = postgresSocketDirectory else { return nil }
        let path = directory + "/tls/ca.crt"
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }

    /// Superuser connection straight to PostgreSQL, for checks behind Lifeguard's back.
    static func direct(database: String = "lgtest") throws -> PGConnection {
        try PGConnection("host=\(postgresSocketDirectory!) port=\(postgresPort!) user=postgres dbname=\(database)")
    }

    /// Ends the backend `pid` of an idle server and gives Lifeguard time to see it go, so the client's next
    /// transaction runs on a new server.
    static func terminateIdleBackend(_ pid: String) throws {
        _ = try direct().query("SELECT pg_terminate_backend(\(pid))")
        usleep(200_000)
    }
}

/// A free TCP port on the loopback interface.
func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    address.sin_port = 0
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            _ = bind(fd, $0, length)
            _ = getsockname(fd, $0, &length)
        }
    }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// A listening TCP socket on a free loopback port, for the stand-in servers of the tests.
func loopbackListener(backlog: Int32, port: Int = 0) throws -> (descriptor: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var reuse: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, socklen_t(MemoryLayout<Int32>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0
        }
    }
    guard bound, listen(fd, backlog) == 0 else {
        close(fd)
        throw PGConnection.Failure(message: "cannot listen on a loopback port")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// A real Lifeguard process with a generated configuration, stopped when the test is done with it.
/// Unchecked: after init only `port`, `directory` and the thread-safe `conninfo`/`connect` are shared.
final class LifeguardProcess: @unchecked Sendable {
    let port: Int
    let directory: URL
    private let process = Process()
    private let logURL: URL

    /// Default userlist: every test role with its password.
    static let defaultUserList = """
        "lg_md5" "md5pass"
        "lg_scram" "scrampass"
        "lg_clear" "clearpass"
        "lg_trust" ""
        "postgres" ""
        """

    /// - Parameters:
    ///   - settings: extra `[pgbouncer]` lines (override the defaults below).
    ///   - databases: `[databases]` lines; `{PG}` is replaced by the cluster's host/port.
    ///   - environment: variables set for the process besides the test's own.
    init(
        settings: String = "", databases: String = "lgtest = {PG}\nlgbench = {PG}",
        userList: String = LifeguardProcess.defaultUserList, environment: [String: String] = [:]
    ) throws {
        port = freePort()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("lifeguard-test-\(port)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let pg = "host=127.0.0.1 port=\(TestEnvironment.postgresPort!)"
        let ini = """
            [databases]
            \(databases.replacingOccurrences(of: "{PG}", with: pg))

            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = \(port)
            unix_socket_dir = \(directory.path)
            auth_file = \(directory.path)/userlist.txt
            auth_type = md5
            pool_mode = transaction
            default_pool_size = 5
            threads = \(TestEnvironment.threads)
            ; Plain text to PostgreSQL unless a test asks for TLS: the fake servers and relays of some tests
            ; speak plain text only (the TLS tests set server_tls_sslmode themselves).
            server_tls_sslmode = disable
            \(settings.replacingOccurrences(of: "{DIR}", with: directory.path))
            """
        try ini.write(to: directory.appendingPathComponent("lifeguard.ini"), atomically: true, encoding: .utf8)
        try userList.write(to: directory.appendingPathComponent("userlist.txt"), atomically: true, encoding: .utf8)
        logURL = directory.appendingPathComponent("lifeguard.log")
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        process.executableURL = URL(fileURLWithPath: TestEnvironment.binary)
        process.arguments = [directory.appendingPathComponent("lifeguard.ini").path]
        process.standardError = try FileHandle(forWritingTo: logURL)
        process.standardOutput = FileHandle.nullDevice
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        try process.run()
        try waitUntilListening()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(at: directory)
    }

    func stop() {
        guard process.isRunning else { return }
        process.terminate()
        process.waitUntilExit()
    }

    var isRunning: Bool { process.isRunning }

    var pid: Int32 { process.processIdentifier }

    /// SIGKILL, for a test whose failure may leave Lifeguard unable to act on SIGTERM.
    func kill() {
        guard process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Resident memory of the Lifeguard process, from /proc.
    var residentKilobytes: Int { memoryStatus("VmRSS") }

    /// The most resident memory the Lifeguard process has had so far.
    var peakResidentKilobytes: Int { memoryStatus("VmHWM") }

    private func memoryStatus(_ field: String) -> Int {
        let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix(field + ":") } ?? ""
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }

    var log: String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }

    /// libpq connection string for this Lifeguard.
    func conninfo(user: String = "lg_md5", password: String? = "md5pass", database: String = "lgtest", extra: String = "") -> String {
        var info = "host=127.0.0.1 port=\(port) user=\(user) dbname=\(database) connect_timeout=10 \(extra)"
        if let password { info += " password=\(password)" }
        return info
    }

    func connect(user: String = "lg_md5", password: String? = "md5pass", database: String = "lgtest", extra: String = "") throws -> PGConnection {
        try PGConnection(conninfo(user: user, password: password, database: database, extra: extra))
    }

    /// libpq's error text for a login that must fail; records an issue (and returns "") when it succeeds.
    func loginFailure(
        user: String = "lg_md5", password: String? = "md5pass", database: String = "lgtest",
        sourceLocation: SourceLocation = #_sourceLocation
    ) -> String {
        do {
            _ = try connect(user: user, password: password, database: database)
            Issue.record("login as \(user) to \(database) succeeded", sourceLocation: sourceLocation)
            return ""
        } catch {
            return "\(error)"
        }
    }

    private func waitUntilListening() throws {
        for _ in 0..<200 {
            if let socket = try? RawSocket(port: port) {
                socket.close()
                return
            }
            if !process.isRunning { break }
            usleep(25_000)
        }
        throw PGConnection.Failure(message: "lifeguard did not start listening; log:\n\(log)")
    }
}

/// A plain TCP socket for sending bytes no well-behaved client would send.
final class RawSocket {
    private var fd: Int32

    /// `receiveBuffer` caps the kernel's receive buffer (set before connecting), so a test of a client that
    /// does not read fills it quickly.
    init(port: Int, receiveBuffer: Int32? = nil) throws {
        fd = try Self.connectedDescriptor(port: port, receiveBuffer: receiveBuffer)
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// A connected TCP socket to 127.0.0.1:`port`.
    static func connectedDescriptor(port: Int, receiveBuffer: Int32? = nil) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        if var size = receiveBuffer {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = UInt16(port).bigEndian
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else {
            Glibc.close(fd)
            throw PGConnection.Failure(message: "connect failed")
        }
        return fd
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Sends `bytes` for as long as the peer keeps reading: stops when a send has waited `stallSeconds`
    /// without progress (the peer stopped reading) or after `limitSeconds`. Returns the bytes sent.
    func sendUntilStalled(_ bytes: [UInt8], stallSeconds: Int32 = 3, limitSeconds: Double = 60) -> Int {
        var sent = 0
        let deadline = Date().addingTimeInterval(limitSeconds)
        while sent < bytes.count, Date() < deadline {
            let count = bytes[sent...].withUnsafeBytes {
                Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if count > 0 {
                sent += count
            } else if errno == EAGAIN || errno == EWOULDBLOCK {
                var waiting = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                if poll(&waiting, 1, stallSeconds * 1000) == 0 { break }
            } else {
                break
            }
        }
        return sent
    }

    /// Bytes that have arrived and not been read yet, without waiting.
    var pendingByteCount: Int {
        var chunk = [UInt8](repeating: 0, count: 65536)
        return max(0, recv(fd, &chunk, chunk.count, Int32(MSG_PEEK | MSG_DONTWAIT)))
    }

    /// Reads until the peer closes (or the 10 s timeout); returns everything received and whether it closed.
    func readUntilClosed() -> (bytes: [UInt8], closed: Bool) {
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count == 0 { return (received, true) }
            if count < 0 { return (received, false) }
            received += chunk[0..<count]
        }
    }

    /// Reads until `predicate` holds for what arrived so far.
    func read(until predicate: ([UInt8]) -> Bool) -> [UInt8] {
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !predicate(received) {
            let count = recv(fd, &chunk, chunk.count, 0)
            if count <= 0 { break }
            received += chunk[0..<count]
        }
        return received
    }

    /// A v3 StartupMessage.
    static func startupMessage(_ parameters: [(String, String)]) -> [UInt8] {
        var body: [UInt8] = [0, 3, 0, 0]
        for (name, value) in parameters {
            body += Array(name.utf8) + [0] + Array(value.utf8) + [0]
        }
        body.append(0)
        return bigEndian(Int32(body.count + 4)) + body
    }

    /// A frontend message: id, length, body.
    static func message(_ id: Character, _ body: [UInt8] = []) -> [UInt8] {
        [UInt8(ascii: id.unicodeScalars.first!)] + bigEndian(Int32(body.count + 4)) + body
    }

    static func bigEndian(_ value: Int32) -> [UInt8] {
        withUnsafeBytes(of: value.bigEndian) { Array($0) }
    }

    /// The text of the first ErrorResponse's M field in `bytes`, if any.
    static func errorMessage(in bytes: [UInt8]) -> (severity: String, code: String, message: String)? {
        var index = 0
        while index + 5 <= bytes.count {
            let id = bytes[index]
            let length = Int(bytes[index + 1]) << 24 | Int(bytes[index + 2]) << 16 | Int(bytes[index + 3]) << 8 | Int(bytes[index + 4])
            if id == UInt8(ascii: "E"), index + 1 + length <= bytes.count {
                var fields: [UInt8: String] = [:]
                var position = index + 5
                while position < index + 1 + length, bytes[position] != 0 {
                    let code = bytes[position]
                    let end = bytes[(position + 1)...].firstIndex(of: 0) ?? bytes.count
                    fields[code] = String(decoding: bytes[(position + 1)..<end], as: UTF8.self)
                    position = end + 1
                }
                return (fields[UInt8(ascii: "S")] ?? "", fields[UInt8(ascii: "C")] ?? "", fields[UInt8(ascii: "M")] ?? "")
            }
            index += 1 + max(length, 4)
        }
        return nil
    }
}

/// Polls `condition` every 50 ms for up to `seconds`; returns whether it came true.
func waitUntil(_ seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        usleep(50_000)
    }
    return condition()
}

/// Runs `body` on another thread, for a client that is expected to block (queued, paused, suspended).
final class Background<Value: Sendable>: Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let value = NIOLockedValueBox<Value?>(nil)

    init(_ body: @escaping @Sendable () -> Value?) {
        // A thread of its own: `body` blocks, and Dispatch's pool is only as wide as the CPU count.
        Thread.detachNewThread { [done, value] in
            let result = body()
            value.withLockedValue { $0 = result }
            done.signal()
        }
    }

    /// Whether `body` returned within `seconds`; once true, true at every later ask.
    func finished(within seconds: Double) -> Bool {
        guard done.wait(timeout: .now() + seconds) == .success else { return false }
        done.signal()
        return true
    }

    var result: Value? { value.withLockedValue { $0 } }
}
