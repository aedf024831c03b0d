import LifeguardCore
import NIOCore
import PostgresWire

/// StartupPacket.read: the same packet (or error) whether bytes arrive at once or in pieces, nothing consumed
/// until a packet is whole, exactly the packet consumed; then ClientStartup's validation, and a write/read
/// round trip. Input: flags byte, seed byte, then the stream.
func fuzzStartupPacket(_ data: [UInt8]) {
    var input = FuzzInput(data)
    let flags = input.byte()
    let seed = input.byte()
    let stream = input.rest()[...]

    var outcomes: [StartupOutcome] = []
    for plan in splitPlans(total: stream.count, seed: seed) {
        var buffer = ByteBuffer()
        var fed = 0
        var outcome = StartupOutcome.incomplete
        for size in plan {
            buffer.writeBytes(stream[stream.startIndex + fed..<stream.startIndex + fed + size])
            fed += size
            let before = buffer.readerIndex
            do {
                guard let packet = try StartupPacket.read(from: &buffer) else {
                    check(buffer.readerIndex == before, "bytes consumed without a packet")
                    continue
                }
                let consumed = buffer.readerIndex - before
                check(consumed >= 8 && consumed <= StartupPacket.maxLength, "consumed \(consumed) bytes")
                check(stream.count >= 4 && consumed == Int(readLength(stream)), "consumed \(consumed), length field differs")
                outcome = .packet(packet)
            } catch let error as WireError {
                outcome = .error(error)
            } catch {
                fatalError("unexpected error type \(error)")
            }
            break
        }
        outcomes.append(outcome)
    }
    for outcome in outcomes.dropFirst() {
        check(outcome == outcomes[0], "split-dependent startup result \(outcome) vs \(outcomes[0])")
    }
    guard case .packet(let packet) = outcomes[0] else { return }

    switch packet {
    case .startup(let version, let parameters):
        let ignored: IgnoredStartupParameters = flags & 1 == 0 ? [] : ["extra_float_digits", "options", "search_path"]
        if let startup = try? ClientStartup(protocolVersion: version, parameters: parameters, ignored: ignored) {
            check(!startup.user.isEmpty && !startup.database.isEmpty, "ClientStartup without user or database")
        }
        guard version == StartupPacket.protocolVersion3 else { return }
        var written = ByteBuffer()
        written.writeStartupMessage(parameters: parameters)
        // Invalid UTF-8 is read back as U+FFFD, which may grow the packet past the limit.
        guard written.readableBytes <= StartupPacket.maxLength else { return }
        let reread = try? StartupPacket.read(from: &written)
        check(reread == packet, "startup packet round trip: \(String(describing: reread)) vs \(packet)")
    case .cancel(let pid, let key):
        var written = ByteBuffer()
        written.writeCancelRequest(processID: pid, secretKey: key)
        check((try? StartupPacket.read(from: &written)) == packet, "cancel request round trip")
    case .sslRequest, .gssEncryptionRequest:
        break
    }
}

private enum StartupOutcome: Equatable {
    case incomplete
    case packet(StartupPacket)
    case error(WireError)
}

private func readLength(_ stream: ArraySlice<UInt8>) -> Int32 {
    var raw: UInt32 = 0
    for byte in stream.prefix(4) { raw = raw << 8 | UInt32(byte) }
    return Int32(bitPattern: raw)
}
