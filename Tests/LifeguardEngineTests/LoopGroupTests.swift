import EngineTestSupport
import Glibc
import LifeguardEngine
import NIOConcurrencyHelpers
import NIOCore
import Testing

/// Several loops on their threads: parking the others for a control-plane body, and one listening socket
/// watched by several loops.
@Suite struct LoopGroupTests {
    /// Counts the ticks of a 1 ms repeating timer on each loop but the first.
    private func tickCounters(_ group: LoopGroup) -> [NIOLockedValueBox<Int>] {
        group.loops.dropFirst().map { loop in
            let ticks = NIOLockedValueBox(0)
            loop.execute { _ = loop.scheduleRepeating(every: 0.001) { ticks.withLockedValue { $0 += 1 } } }
            return ticks
        }
    }

    private func waitFor(_ condition: () -> Bool) -> Bool {
        for _ in 0..<500 {
            if condition() { return true }
            usleep(2000)
        }
        return false
    }

    @Test func otherLoopsStandStillWhileTheBodyRuns() throws {
        let group = try LoopGroup(count: 3)
        group.startThreads()
        defer { group.stopThreads() }
        let ticks = tickCounters(group)
        #expect(waitFor { ticks.allSatisfy { $0.withLockedValue { $0 } > 2 } })

        let (before, after) = group.withOthersParked(from: group.loops[0]) {
            let before = ticks.map { $0.withLockedValue { $0 } }
            usleep(50_000)  // fifty ticks' worth
            return (before, ticks.map { $0.withLockedValue { $0 } })
        }
        #expect(before == after, "a parked loop ran its timer")
        let released = after
        #expect(waitFor { zip(ticks, released).allSatisfy { $0.withLockedValue { $0 } > $1 } })
    }

    @Test func loopsParkingEachOtherAtOnceAllFinish() throws {
        let group = try LoopGroup(count: 3)
        group.startThreads()
        defer { group.stopThreads() }
        let finished = NIOLockedValueBox(0)
        let rounds = 200
        for loop in group.loops.dropFirst() {
            loop.execute {
                for _ in 0..<rounds {
                    group.withOthersParked(from: loop) {
                        // Nested requests run at once: the others are parked already.
                        group.withOthersParked(from: loop) { finished.withLockedValue { $0 += 1 } }
                    }
                }
            }
        }
        // The first loop runs here, so it can be parked too.
        #expect(group.loops[0].run(until: { finished.withLockedValue { $0 } == 2 * rounds }, timeout: 20))
    }

    /// Bytes a peer sent before the request have been read by the other loop when `then` runs, even when
    /// that loop was busy and has its cross-thread tasks queued ahead of its sockets.
    @Test func afterOtherLoopsCatchUpTheyHaveReadWhatWasSentBefore() throws {
        let caller = try EngineLoop()
        let pair = try EngineTests.Pair()
        let group = LoopGroup(loops: [caller, pair.loop])
        group.startThreads()
        defer { group.stopThreads() }
        pair.loop.execute { usleep(50_000) }
        try pair.peer.write(ByteBuffer(string: "Terminate"))
        var seenWhenCaughtUp: Int?
        group.afterOtherLoopsCatchUp(from: caller) { seenWhenCaughtUp = pair.recorder.received.readableBytes }
        #expect(caller.run(until: { seenWhenCaughtUp != nil }))
        #expect(seenWhenCaughtUp == 9)
    }

    @Test func aConnectionMovesToAnotherLoopAndKeepsCarryingBytes() throws {
        let first = try EngineLoop()
        let second = try EngineLoop()
        let echo = EngineTests.Recorder()
        echo.echoes = true
        var accepted: Connection?
        let listener = try Listener.listen(
            on: try SocketAddress(ipAddress: "127.0.0.1", port: 0), backlog: 4, listenerOptions: [], loop: first
        ) {
            $0.delegate = echo
            accepted = $0
        }
        let peer = try PeerSocket(connectingTo: listener.localAddress!)
        try #require(first.run(until: { accepted != nil }))
        let connection = try #require(accepted)
        try peer.write(ByteBuffer(string: "one"))
        #expect(first.run(until: { echo.received.readableBytes == 3 }))

        #expect(connection.canMove)
        connection.detach()
        try peer.write(ByteBuffer(string: "two"))
        first.settle()
        #expect(echo.received.readableBytes == 3, "a detached connection is not read by its old loop")
        try connection.attach(to: second)
        #expect(connection.loop === second)
        #expect(second.run(until: { echo.received.readableBytes == 6 }), "the bytes sent meanwhile arrive")
        var echoed = ByteBuffer()
        #expect(second.run(until: {
            var chunk = peer.readAvailable()
            echoed.writeBuffer(&chunk)
            return echoed.readableBytes == 6
        }))
        #expect(String(buffer: echoed) == "onetwo")
        connection.close()
        listener.close()
    }

    @Test func loopsSharingAListeningSocketEachAccept() throws {
        let group = try LoopGroup(count: 2)
        let acceptedBy = NIOLockedValueBox<[ObjectIdentifier]>([])
        var accepted: [Connection] = []
        let record = { (connection: Connection) in
            acceptedBy.withLockedValue { $0.append(ObjectIdentifier(connection.loop)) }
            accepted.append(connection)
        }
        let first = try Listener.listen(
            on: try SocketAddress(ipAddress: "127.0.0.1", port: 0), backlog: 16, listenerOptions: [],
            loop: group.loops[0], shared: true, onAccept: record)
        let second = try first.alsoWatch(on: group.loops[1], onAccept: record)
        let address = try #require(first.localAddress)

        // Only the second loop runs: it takes the connection.
        group.startThreads()
        let viaSecond = try PeerSocket(connectingTo: address)
        #expect(waitFor { acceptedBy.withLockedValue { $0.count } == 1 })
        // It stops watching; the socket stays open for the first loop.
        let stopped = NIOLockedValueBox(false)
        let secondListener = UncheckedSendable(second)
        group.loops[1].execute {
            secondListener.value.close()
            stopped.withLockedValue { $0 = true }
        }
        #expect(waitFor { stopped.withLockedValue { $0 } })
        group.stopThreads()
        let viaFirst = try PeerSocket(connectingTo: address)
        #expect(group.loops[0].run(until: { acceptedBy.withLockedValue { $0.count } == 2 }))
        #expect(
            acceptedBy.withLockedValue { $0 }
                == [ObjectIdentifier(group.loops[1]), ObjectIdentifier(group.loops[0])])
        first.close()
        for connection in accepted { connection.close() }
        viaSecond.close()
        viaFirst.close()
    }
}

/// Hands a loop-owned object to the task that runs on its loop.
private struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
