import Glibc
import Logging
import NIOConcurrencyHelpers
import Synchronization

/// How much is logged: `verbose` from the configuration (changed at run time by RELOAD and the console's
/// SET) plus the command line's `-v` count. Process-wide, as the logging system is: 0 logs LOG and above,
/// 1 DEBUG, 2 and more NOISE (PgBouncer's words).
public enum LogVerbosity {
    private static let configured = Atomic<Int>(0)
    private static let commandLine = Atomic<Int>(0)

    public static func set(commandLine count: Int) { commandLine.store(count, ordering: .relaxed) }
    public static func set(configured verbose: Int) { configured.store(verbose, ordering: .relaxed) }

    static var level: Logger.Level {
        switch configured.load(ordering: .relaxed) + commandLine.load(ordering: .relaxed) {
        case ...0: .info
        case 1: .debug
        default: .trace
        }
    }
}

/// Writes log lines in PgBouncer's format, `2026-11-21 10:00:00.123 UTC [1234] LOG message`, so that log
/// parsers written for PgBouncer (pgbadger and friends) read Lifeguard's logs unchanged.
public struct PgBouncerLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    private let sink: LogSink

    /// LogVerbosity's, read at every call so that a change of `verbose` applies at once.
    public var logLevel: Logger.Level {
        get { LogVerbosity.level }
        set { LogVerbosity.set(configured: newValue <= .trace ? 2 : newValue <= .debug ? 1 : 0) }
    }

    public init(sink: LogSink) {
        self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let message = Self.escapingControlCharacters("\(event.message)")
        sink.write("\(Self.timestamp()) [\(sink.processID)] \(Self.levelName(event.level)) \(message)\n")
    }

    /// `text` with its control characters written as escapes (`\n`, `\r`, `\t`, `\xNN`): messages carry
    /// what clients chose (user and database names, parameters, console commands), and a newline in one
    /// must not start a forged log line. C1 controls count too (some tools break lines at NEL, U+0085).
    static func escapingControlCharacters(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: isControl) else { return text }
        var escaped = String.UnicodeScalarView()
        for scalar in text.unicodeScalars {
            guard isControl(scalar) else {
                escaped.append(scalar)
                continue
            }
            let replacement: String
            switch scalar {
            case "\n": replacement = "\\n"
            case "\r": replacement = "\\r"
            case "\t": replacement = "\\t"
            default:
                let hex = String(scalar.value, radix: 16)
                replacement = "\\x" + (hex.count < 2 ? "0" + hex : hex)
            }
            escaped.append(contentsOf: replacement.unicodeScalars)
        }
        return String(escaped)
    }

    private static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
    }

    /// PgBouncer's level words.
    static func levelName(_ level: Logger.Level) -> String {
        switch level {
        case .trace: return "NOISE"
        case .debug: return "DEBUG"
        case .info, .notice: return "LOG"
        case .warning: return "WARNING"
        case .error: return "ERROR"
        case .critical: return "FATAL"
        }
    }

    /// Milliseconds in UTC, formatted without Foundation so logging stays cheap.
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        let millis = Int32(now.tv_nsec / 1_000_000)
        return "\(parts.tm_year + 1900)-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2)) "
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(millis, 3)) UTC"
    }
}

/// Where log lines go: standard error and/or a log file opened for appending. Shared by every Logger.
public final class LogSink: @unchecked Sendable {
    private let lock = NIOLock()
    let processID = getpid()
    private let toStandardError: Bool
    private var fileDescriptor: Int32 = -1

    /// Opens `logfile` (if any) for appending; throws a readable message when it cannot be opened.
    private let logfile: String?

    public init(toStandardError: Bool, logfile: String?) throws {
        self.toStandardError = toStandardError
        self.logfile = logfile.flatMap { $0.isEmpty ? nil : $0 }
        if let path = self.logfile {
            fileDescriptor = try Self.open(path)
        }
    }

    private static func open(_ path: String) throws -> Int32 {
        let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
        guard fd >= 0 else {
            throw LogSinkError(message: "cannot open logfile \(path): \(String(cString: strerror(errno)))")
        }
        return fd
    }

    /// Reopens the log file under its name, so a rotated file is let go (SIGHUP, RELOAD).
    public func reopen() {
        guard let logfile, let fd = try? Self.open(logfile) else { return }
        lock.withLock {
            if fileDescriptor >= 0 { close(fileDescriptor) }
            fileDescriptor = fd
        }
    }

    func write(_ line: String) {
        lock.withLock {
            var line = line
            line.withUTF8 { bytes in
                if toStandardError { _ = Glibc.write(2, bytes.baseAddress, bytes.count) }
                if fileDescriptor >= 0 { _ = Glibc.write(fileDescriptor, bytes.baseAddress, bytes.count) }
            }
        }
    }
}

public struct LogSinkError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
