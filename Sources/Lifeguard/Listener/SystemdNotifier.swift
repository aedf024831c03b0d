import Glibc

/// systemd's readiness protocol (`Type=notify`) without libsystemd: one datagram per state change to the
/// Unix socket that `$NOTIFY_SOCKET` names (a path, or `@name` in the abstract namespace). Without the
/// variable (not started by systemd) every call does nothing.
struct SystemdNotifier {
    private let socketPath: [UInt8]?

    init(environment variable: String? = getenv("NOTIFY_SOCKET").map { String(cString: $0) }) {
        guard let variable, !variable.isEmpty, variable.utf8.count < MemoryLayout.size(ofValue: sockaddr_un().sun_path),
            variable.hasPrefix("/") || variable.hasPrefix("@")
        else {
            socketPath = nil
            return
        }
        var bytes = Array(variable.utf8)
        if bytes[0] == UInt8(ascii: "@") { bytes[0] = 0 }  // the abstract namespace
        socketPath = bytes
    }

    /// Listening: clients can come.
    func ready() { send("READY=1\nSTATUS=accepting connections") }

    /// A reload starts; `ready()` ends it. systemd wants the monotonic clock with it (systemd 253's
    /// `Type=notify-reload`).
    func reloading() {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        send("RELOADING=1\nMONOTONIC_USEC=\(Int(now.tv_sec) * 1_000_000 + Int(now.tv_nsec) / 1000)")
    }

    func stopping() { send("STOPPING=1") }

    private func send(_ message: String) {
        guard let socketPath else { return }
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: socketPath) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + socketPath.count)
        let bytes = Array(message.utf8)
        _ = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(fd, bytes, bytes.count, Int32(MSG_NOSIGNAL), $0, length)
            }
        }
    }
}
