import EngineTestSupport
import Glibc
import LifeguardEngine
import NIOConcurrencyHelpers
import NIOCore
import Testing

/// The engine on real loopback sockets: reads, queued writes and back-pressure, held reads, closing, timers,
/// cross-thread tasks.
@Suite struct EngineTests {
    /// Records what the loop tells it; optionally echoes.
    final class Recorder: ConnectionDelegate {
        var received = ByteBuffer()
        var kept: [ByteBuffer] = []
        var echoes = false
        var keepsReads = false
        var writableCalls = 0
        var closed = false
        var closeError: SocketError?
        var connected = false
        var failure: SocketError?

        func connectionConnected(_ connection: Connection) { connected = true }
        func connectionFailed(_ connection: Connection, error: SocketError) { failure = error }
        func connectionRead(_ connection: Connection, _ bytes: ByteBuffer) {
            var copy = bytes
            received.writeBuffer(&copy)
            if keepsReads { kept.append(bytes) }
            if echoes { connection.write(bytes) }
        }
        func connectionReadComplete(_ connection: Connection) { connection.flush() }
        func connectionWritable(_ connection: Connection) { writableCalls += 1 }
        func connectionClosed(_ connection: Connection, error: SocketError?) {
            closed = true
            closeError = error
        }
    }

    /// A loop with one accepted connection, whose delegate is a Recorder, and the test's end of it.
    final class Pair {
        let loop: EngineLoop
        let listener: Listener
        let peer: PeerSocket
        let recorder = Recorder()
        private(set) var connection: Connection!

        init() throws {
            loop = try EngineLoop()
            var accepted: Connection?
            let recorder = self.recorder
            listener = try Listener.listen(
                on: try SocketAddress(ipAddress: "127.0.0.1", port: 0), backlog: 4, listenerOptions: [], loop: loop
            ) {
                $0.delegate = recorder
                accepted = $0
            }
            peer = try PeerSocket(connectingTo: listener.localAddress!)
            try #require(loop.run(until: { accepted != nil }))
            connection = accepted
        }
    }

    @Test func bytesAreReadAndEchoed() throws {
        let pair = try Pair()
        pair.recorder.echoes = true
        try pair.peer.write(ByteBuffer(string: "hello"))
        var echoed = ByteBuffer()
        pair.loop.run(until: {
            var more = pair.peer.readAvailable()
            echoed.writeBuffer(&more)
            return echoed.readableBytes == 5
        })
        #expect(String(buffer: echoed) == "hello")
        #expect(pair.connection.remoteAddress?.ipAddress == "127.0.0.1")
        #expect(pair.connection.localAddress?.port == pair.listener.localAddress?.port)
    }

    /// The loop reads every connection into one buffer: a read a consumer keeps must not be overwritten.
    @Test func keptReadsSurviveTheNextRead() throws {
        let pair = try Pair()
        pair.recorder.keepsReads = true
        try pair.peer.write(ByteBuffer(string: "first"))
        pair.loop.run(until: { pair.recorder.kept.count == 1 })
        try pair.peer.write(ByteBuffer(string: "second"))
        pair.loop.run(until: { pair.recorder.kept.count == 2 })
        #expect(pair.recorder.kept.map { String(buffer: $0) } == ["first", "second"])
    }

    @Test func heldReadsWaitUntilReleased() throws {
        let pair = try Pair()
        pair.connection.readsHeld = true
        try pair.peer.write(ByteBuffer(string: "later"))
        pair.loop.settle()
        #expect(pair.recorder.received.readableBytes == 0)
        pair.connection.readsHeld = false
        #expect(pair.loop.run(until: { pair.recorder.received.readableBytes == 5 }))
    }

    /// Writes the peer does not read queue up to the high watermark (the connection is then not writable),
    /// wait for EPOLLOUT, and arrive complete and in order once the peer reads.
    @Test func unreadWritesApplyBackPressureThenDrain() throws {
        // The peer keeps its default receive buffer: a tiny one can stall loopback TCP on zero-window probes.
        let pair = try Pair()
        let chunk = ByteBuffer(bytes: (0..<16_384).map { UInt8(truncatingIfNeeded: $0 &* 7) })
        var sent = 0
        while pair.connection.isWritable, sent < 64 << 20 {
            pair.connection.writeAndFlush(chunk)
            sent += chunk.readableBytes
        }
        #expect(!pair.connection.isWritable, "64 MB went out without the peer reading")
        var total = 0
        var inOrder = true
        pair.loop.run(until: {
            let bytes = pair.peer.readAvailable()
            for (offset, byte) in bytes.readableBytesView.enumerated()
            where byte != UInt8(truncatingIfNeeded: ((total + offset) % 16_384) &* 7) {
                inOrder = false
            }
            total += bytes.readableBytes
            return total == sent
        }, timeout: 20)
        #expect(total == sent)
        #expect(inOrder)
        #expect(pair.connection.isWritable)
        #expect(pair.recorder.writableCalls == 1)
    }

    @Test func closeAfterWritingDeliversTheLastMessage() throws {
        let pair = try Pair()
        pair.connection.closeAfterWriting(ByteBuffer(string: "goodbye"))
        #expect(pair.loop.run(until: { pair.recorder.closed }))
        #expect(String(buffer: pair.peer.readAvailable()) == "goodbye")
        #expect(pair.peer.isClosedByPeer)
        #expect(pair.connection.delegate == nil, "a closed connection must let go of its delegate")
    }

    @Test func closeAfterWritingToAPeerThatDoesNotReadClosesAtOnce() throws {
        let pair = try Pair()
        pair.peer.setReceiveBuffer(4096)
        while pair.connection.isWritable { pair.connection.writeAndFlush(ByteBuffer(repeating: 1, count: 65_536)) }
        pair.connection.closeAfterWriting(ByteBuffer(string: "goodbye"))
        #expect(!pair.connection.isOpen)
    }

    @Test func peerCloseIsReported() throws {
        let pair = try Pair()
        pair.peer.close()
        #expect(pair.loop.run(until: { pair.recorder.closed }))
        #expect(pair.recorder.closeError == nil)
    }

    @Test func peerCloseIsReportedWhileReadsAreHeld() throws {
        let pair = try Pair()
        pair.connection.readsHeld = true
        // A reset (SO_LINGER 0) raises EPOLLHUP, which arrives whether reads are wanted or not.
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(pair.peer.fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        pair.peer.close()
        #expect(pair.loop.run(until: { pair.recorder.closed }))
    }

    @Test func connectingToAClosedPortFails() throws {
        let loop = try EngineLoop()
        // Bind a port, then close it: nothing listens there.
        let probe = try Listener.listen(
            on: try SocketAddress(ipAddress: "127.0.0.1", port: 0), backlog: 1, listenerOptions: [], loop: loop
        ) { _ in }
        let address = probe.localAddress!
        probe.close()
        let recorder = Recorder()
        _ = try Connection.connect(to: address, options: [], on: loop, delegate: recorder)
        #expect(loop.run(until: { recorder.failure != nil }))
        #expect(recorder.failure?.errorNumber == ECONNREFUSED)
        #expect(!recorder.connected)
    }

    @Test func outgoingConnectionCarriesBytes() throws {
        let pair = try Pair()
        pair.recorder.echoes = true
        let client = Recorder()
        let connection = try Connection.connect(
            to: pair.listener.localAddress!, options: [], on: pair.loop, delegate: client)
        // Queued before the connection is up: sent once it is.
        connection.writeAndFlush(ByteBuffer(string: "ping"))
        #expect(pair.loop.run(until: { client.received.readableBytes == 4 }))
        #expect(client.connected)
        #expect(String(buffer: client.received) == "ping")
    }

    @Test func timersFireInOrderAndCanBeCancelled() throws {
        let loop = try EngineLoop()
        var fired: [String] = []
        loop.schedule(after: 0.06) { fired.append("late") }
        loop.schedule(after: 0.02) { fired.append("early") }
        let cancelled = loop.schedule(after: 0.04) { fired.append("cancelled") }
        loop.cancel(cancelled)
        var ticks = 0
        let repeating = loop.scheduleRepeating(every: 0.01) { ticks += 1 }
        #expect(loop.run(until: { fired.count == 2 }))
        loop.cancel(repeating)
        let ticksAtCancel = ticks
        loop.settle()
        #expect(fired == ["early", "late"])
        #expect(ticksAtCancel >= 3)
        #expect(ticks == ticksAtCancel)
    }

    @Test func tasksFromOtherThreadsWakeTheLoop() throws {
        let loop = try EngineLoop()
        let done = NIOLockedValueBox(false)
        var ranOnLoop = false
        let loopThread = pthread_self()
        loop.offload({ pthread_self() }) { workerThread in
            ranOnLoop = pthread_equal(pthread_self(), loopThread) != 0 && pthread_equal(workerThread, loopThread) == 0
            done.withLockedValue { $0 = true }
        }
        #expect(loop.run(until: { done.withLockedValue { $0 } }))
        #expect(ranOnLoop, "the work ran on another thread and its result came back on the loop's")
    }
}
