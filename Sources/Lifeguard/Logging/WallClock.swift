import Glibc

/// Wall-clock time in whole seconds, for the times the admin console shows (connect_time, request_time).
enum WallClock {
    static func seconds() -> Int {
        Int(time(nil))
    }

    /// PgBouncer's console time format, `2026-11-21 10:00:00 UTC` (local time zone of the process).
    static func format(_ seconds: Int) -> String {
        var time = time_t(seconds)
        var parts = tm()
        localtime_r(&time, &parts)
        var buffer = [CChar](repeating: 0, count: 64)
        let length = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M:%S %Z", &parts)
        return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
