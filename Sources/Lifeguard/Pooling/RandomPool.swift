import CLinuxShims
import Glibc

/// Random bytes from the kernel's generator, drawn 4 KB at a time. Every login takes a few (a cancel key, an
/// md5 salt, a SCRAM nonce); the standard library's generator makes one getrandom system call per eight
/// bytes, which showed in connection-per-transaction loads.
final class RandomPool {
    private var buffer = [UInt8](repeating: 0, count: 4096)
    private var used = 4096

    func bytes(_ count: Int) -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(count)
        while result.count < count {
            if used == buffer.count { refill() }
            let taken = min(count - result.count, buffer.count - used)
            result += buffer[used..<used + taken]
            forget(taken)
        }
        return result
    }

    func next64() -> UInt64 {
        if buffer.count - used < 8 { refill() }
        let value = buffer.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: used, as: UInt64.self) }
        forget(8)
        return value
    }

    /// Bytes handed out are not kept around.
    private func forget(_ count: Int) {
        buffer.withUnsafeMutableBytes { _ = memset($0.baseAddress! + used, 0, count) }
        used += count
    }

    private func refill() {
        var filled = 0
        while filled < buffer.count {
            let count = buffer.withUnsafeMutableBytes { getrandom($0.baseAddress! + filled, $0.count - filled, 0) }
            if count > 0 {
                filled += count
            } else if errno != EINTR {
                fatalError("getrandom failed: \(String(cString: strerror(errno)))")
            }
        }
        used = 0
    }
}
