import Foundation
import Glibc
import Testing

/// Bytes no well-behaved client sends. Each must end in a clean close (with PgBouncer's error where one is
/// due), never a crash or a hang, and other clients must keep working.
extension IntegrationTests {
@Suite struct BadInputTests {
    /// Logs in over a raw socket (trust) and returns the socket, positioned after the first ReadyForQuery.
    private func loggedInSocket(_ lifeguard: LifeguardProcess) throws -> RawSocket {
        let socket = try RawSocket(port: lifeguard.port)
        socket.send(RawSocket.startupMessage([("user", "lg_trust"), ("database", "lgtest")]))
        let welcome = socket.read { bytes in bytes.count >= 6 && bytes.suffix(6).first == UInt8(ascii: "Z") }
        try #require(welcome.contains(UInt8(ascii: "K")), "no welcome: \(welcome)")
        return socket
    }

    private func expectStillServing(_ lifeguard: LifeguardProcess) throws {
        #expect(lifeguard.isRunning)
        let client = try lifeguard.connect(user: "lg_trust", password: nil)
        #expect(try client.value("SELECT 'alive'") == "alive")
    }

    @Test func garbageBeforeLoginIsRejected() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        let socket = try RawSocket(port: lifeguard.port)
        socket.send(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        let (_, closed) = socket.readUntilClosed()
        #expect(closed)
        try expectStillServing(lifeguard)
    }

    @Test func truncatedStartupPacketThenDisconnect() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        do {
            let socket = try RawSocket(port: lifeguard.port)
            socket.send(Array(RawSocket.startupMessage([("user", "lg_trust")]).prefix(9)))
        }
        try expectStillServing(lifeguard)
    }

    @Test func oldProtocolVersionGetsPgBouncersError() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        let socket = try RawSocket(port: lifeguard.port)
        var packet = RawSocket.startupMessage([("user", "lg_trust")])
        packet[4] = 0
        packet[5] = 2
        socket.send(packet)
        let (bytes, closed) = socket.readUntilClosed()
        #expect(closed)
        #expect(RawSocket.errorMessage(in: bytes)?.message == "old V2 protocol not supported")
        #expect(RawSocket.errorMessage(in: bytes)?.code == "08P01")
    }

    @Test func unsupportedStartupParameterIsRejected() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        let socket = try RawSocket(port: lifeguard.port)
        socket.send(RawSocket.startupMessage([("user", "lg_trust"), ("search_path", "x")]))
        let (bytes, closed) = socket.readUntilClosed()
        #expect(closed)
        #expect(RawSocket.errorMessage(in: bytes)?.message == "unsupported startup parameter: search_path")
    }

    @Test(arguments: [UInt32(0x7FFF_FFFF), UInt32(0xFFFF_FFFF), UInt32(0x8000_0000), UInt32(2)])
    func absurdMessageLengthsCloseTheClient(length: UInt32) throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust\nmax_packet_size = 1048576")
        let socket = try loggedInSocket(lifeguard)
        socket.send([UInt8(ascii: "Q")] + withUnsafeBytes(of: length.bigEndian) { Array($0) } + Array("SELECT 1".utf8))
        let (bytes, closed) = socket.readUntilClosed()
        #expect(closed)
        let error = RawSocket.errorMessage(in: bytes)
        #expect(error?.severity == "FATAL")
        #expect(error?.code == "08P01")
        try expectStillServing(lifeguard)
    }

    @Test func unknownMessageTypeClosesTheClient() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        let socket = try loggedInSocket(lifeguard)
        socket.send([UInt8(ascii: "y"), 0, 0, 0, 4])
        let (bytes, closed) = socket.readUntilClosed()
        #expect(closed)
        #expect(RawSocket.errorMessage(in: bytes)?.message.hasPrefix("unknown pkt from client") == true)
        try expectStillServing(lifeguard)
    }

    @Test func clientVanishingMidQueryDoesNotHurtOthers() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust\ndefault_pool_size = 1")
        do {
            let socket = try loggedInSocket(lifeguard)
            let query = Array("SELECT pg_sleep(0.3)".utf8) + [0]
            socket.send([UInt8(ascii: "Q")] + RawSocket.bigEndian(Int32(query.count + 4)) + query)
            socket.close()
        }
        try expectStillServing(lifeguard)
    }

    @Test func halfAMessageThenDisconnect() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust\ndefault_pool_size = 1")
        do {
            let socket = try loggedInSocket(lifeguard)
            socket.send([UInt8(ascii: "Q"), 0, 0, 0, 100] + Array("SELECT".utf8))
            usleep(100_000)
            socket.close()
        }
        try expectStillServing(lifeguard)
    }

    @Test func cancelWithUnknownKeyIsDroppedSilently() throws {
        let lifeguard = try LifeguardProcess(settings: "auth_type = trust")
        let socket = try RawSocket(port: lifeguard.port)
        socket.send(RawSocket.bigEndian(16) + RawSocket.bigEndian(80_877_102) + RawSocket.bigEndian(1) + RawSocket.bigEndian(2))
        let (bytes, closed) = socket.readUntilClosed()
        #expect(closed)
        #expect(bytes.isEmpty)
        try expectStillServing(lifeguard)
    }
}
}
