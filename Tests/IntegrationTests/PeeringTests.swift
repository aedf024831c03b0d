import Foundation
import Glibc
import Testing

/// Peering (`peer_id`, `[peers]`): several Lifeguard processes behind one address, each forwarding a cancel
/// request for a key another one gave out to that process.
extension IntegrationTests {
@Suite struct PeeringTests {
    /// A client of `lifeguard` with `SELECT pg_sleep(seconds)` running, and the cancel key it was given.
    private func sleepingClient(of lifeguard: LifeguardProcess, seconds: Int = 10) throws -> (socket: RawSocket, processID: Int32, secret: Int32) {
        let socket = try RawSocket(port: lifeguard.port)
        socket.send(RawSocket.startupMessage([("user", "lg_trust"), ("database", "lgtest")]))
        let welcome = socket.read { $0.count >= 6 && $0.suffix(6).first == UInt8(ascii: "Z") }
        var offset = 0
        var key: (Int32, Int32)?
        while offset + 5 <= welcome.count {
            let length = Int(welcome[offset + 1]) << 24 | Int(welcome[offset + 2]) << 16
                | Int(welcome[offset + 3]) << 8 | Int(welcome[offset + 4])
            if welcome[offset] == UInt8(ascii: "K"), length == 12, offset + 13 <= welcome.count {
                let field = { (at: Int) in
                    Int32(bitPattern: welcome[at..<at + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
                }
                key = (field(offset + 5), field(offset + 9))
            }
            offset += 1 + length
        }
        let (processID, secret) = try #require(key)
        socket.send(RawSocket.message("Q", Array("SELECT pg_sleep(\(seconds))".utf8) + [0]))
        usleep(300_000)
        return (socket, processID, secret)
    }

    private func sendCancel(to lifeguard: LifeguardProcess, processID: Int32, secret: Int32) throws {
        let socket = try RawSocket(port: lifeguard.port)
        socket.send(RawSocket.bigEndian(16) + RawSocket.bigEndian(80_877_102) + RawSocket.bigEndian(processID)
            + RawSocket.bigEndian(secret))
        _ = socket.readUntilClosed()
    }

    /// Reads the client until its query ends; the SQLSTATE of the error it got, if any.
    private func outcome(of socket: RawSocket) -> String? {
        let bytes = socket.read { $0.count >= 6 && $0.suffix(6).first == UInt8(ascii: "Z") }
        return RawSocket.errorMessage(in: bytes)?.code
    }

    @Test func aCancelForAnotherPeersKeyIsForwardedThere() throws {
        let first = try LifeguardProcess(settings: "auth_type = trust\npeer_id = 1\nverbose = 1")
        let second = try LifeguardProcess(settings: """
            auth_type = trust
            admin_users = postgres
            peer_id = 2
            verbose = 1
            [peers]
            1 = host=127.0.0.1 port=\(first.port)
            2 = host=127.0.0.1 port=\(freePort())
            """)
        let console = try second.connect(user: "postgres", password: nil, database: "pgbouncer")
        let peers = try console.records("SHOW PEERS")
        #expect(peers.map { $0["peer_id"] } == ["1", "2"], "its own id may be listed; it is never forwarded to")
        #expect(peers.first?["port"] == .some("\(first.port)"))

        let client = try sleepingClient(of: first)
        #expect(client.processID >> 16 & 0xFF == 1 && client.processID >> 8 & 0xFF == 0, "the key carries peer id 1")
        #expect(client.secret & 3 == 3, "and a TTL of three forwards")
        try sendCancel(to: second, processID: client.processID, secret: client.secret)
        #expect(outcome(of: client.socket) == "57014")
        #expect(second.log.contains("forwarding cancellation request to peer 1"))
    }

    /// A request whose TTL is used up, or that names a peer not configured, is dropped: no loop between
    /// processes, no cancel of anything else.
    @Test func aCancelWithoutTTLOrKnownPeerIsDropped() throws {
        let first = try LifeguardProcess(settings: "auth_type = trust\npeer_id = 1")
        let second = try LifeguardProcess(settings: """
            auth_type = trust
            peer_id = 2
            verbose = 1
            [peers]
            1 = host=127.0.0.1 port=\(first.port)
            """)
        let client = try sleepingClient(of: first, seconds: 2)
        try sendCancel(to: second, processID: client.processID, secret: client.secret & ~3)
        #expect(second.log.contains("failed to forward cancel request because its TTL was exhausted"))
        let otherPeer = client.processID & ~0x00FF_FF00 | 3 << 16
        try sendCancel(to: second, processID: otherPeer, secret: client.secret)
        #expect(second.log.contains("could not find peer 3 to forward a cancel request to"))
        // The query ran its full course.
        #expect(outcome(of: client.socket) == nil)
    }
}
}
