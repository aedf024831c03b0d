import Glibc

/// The engine loops of one process, each on its own thread, and the one way to act on all of them at once:
/// `withOthersParked` stops every other loop between two events while its body runs, so the body may read
/// and change what any loop owns (PgBouncer's console commands and signals see one consistent process, as
/// in a single-threaded pooler). It is for the control plane (console, signals, reload): a parked loop
/// serves no traffic.
///
/// Sendable: `withOthersParked` may be called from any of its loops' threads.
public final class LoopGroup: @unchecked Sendable {
    public let loops: [EngineLoop]
    /// Held by the loop that parks the others; recursive, so a body that asks again just runs.
    private var exclusive = pthread_mutex_t()
    /// Set only by the holder of `exclusive`: how deep its nested `withOthersParked` calls are.
    private var depth = 0
    private var threads: [pthread_t] = []
    /// Set before the threads start and cleared once they are joined (pthread_create and pthread_join
    /// order it with the threads' reads).
    private var othersRunning = false

    public convenience init(count: Int) throws {
        precondition(count >= 1)
        self.init(loops: try (0..<count).map { _ in try EngineLoop() })
    }

    /// A group of loops made elsewhere (a test's loop).
    public init(loops: [EngineLoop]) {
        self.loops = loops
        var attributes = pthread_mutexattr_t()
        pthread_mutexattr_init(&attributes)
        pthread_mutexattr_settype(&attributes, Int32(PTHREAD_MUTEX_RECURSIVE))
        pthread_mutex_init(&exclusive, &attributes)
        pthread_mutexattr_destroy(&attributes)
    }

    deinit {
        pthread_mutex_destroy(&exclusive)
    }

    /// Runs every loop but the first on a thread of its own; the caller runs the first (`loops[0].run()`).
    public func startThreads() {
        othersRunning = loops.count > 1
        for (index, loop) in loops.enumerated().dropFirst() {
            let box = Unmanaged.passRetained(ThreadBody { loop.run() })
            var thread = pthread_t()
            let result = pthread_create(
                &thread, nil,
                { argument in
                    let body = Unmanaged<ThreadBody>.fromOpaque(argument!).takeRetainedValue()
                    body.run()
                    return nil
                }, box.toOpaque())
            precondition(result == 0, "cannot start engine thread \(index): errno \(result)")
            threads.append(thread)
        }
    }

    /// Stops the other loops' threads and waits for them (after the first loop's `run` returned).
    public func stopThreads() {
        for loop in loops.dropFirst() { loop.execute { loop.stop() } }
        for thread in threads { pthread_join(thread, nil) }
        threads = []
        othersRunning = false
    }

    /// Runs `then` on `caller`, between events, once every other loop has polled and handled what its
    /// sockets held when this was called (at once with one loop). A loop that is about to refuse a client
    /// at a process-wide limit asks this first: a client that hung up on another loop just before this one
    /// connected has then been counted out, as a single-threaded pooler, handling events in order, would
    /// have counted it.
    public func afterOtherLoopsCatchUp(from caller: EngineLoop, _ then: @escaping () -> Void) {
        let others = loops.filter { $0 !== caller }
        guard othersRunning, !others.isEmpty else {
            then()
            return
        }
        // Touched only on `caller`'s thread: each answer comes back there.
        let waiting = LoopBound((remaining: others.count, then: then))
        for other in others {
            other.afterNextPoll {
                caller.executeBetweenEvents {
                    waiting.value.remaining -= 1
                    if waiting.value.remaining == 0 { waiting.value.then() }
                }
            }
        }
    }

    /// Runs `body` on the caller's thread with every loop but `caller` parked between events. With one
    /// loop, or when the other loops' threads are not running (before `startThreads`, after
    /// `stopThreads`), it just runs `body`. While waiting for its turn, the caller serves another loop's
    /// request to park, so two loops asking at once cannot deadlock.
    public func withOthersParked<T>(from caller: EngineLoop, _ body: () throws -> T) rethrows -> T {
        guard othersRunning else { return try body() }
        while pthread_mutex_trylock(&exclusive) != 0 {
            caller.runCrossThreadTasks()
            sched_yield()
        }
        defer { pthread_mutex_unlock(&exclusive) }
        if depth > 0 {
            // Nested: the others are parked already.
            depth += 1
            defer { depth -= 1 }
            return try body()
        }
        let gate = ParkGate(expected: loops.count - 1)
        for loop in loops where loop !== caller {
            loop.execute { gate.park() }
        }
        gate.waitUntilAllParked()
        depth = 1
        defer {
            depth = 0
            gate.release()
        }
        return try body()
    }
}

private final class ThreadBody {
    let run: () -> Void
    init(_ run: @escaping () -> Void) { self.run = run }
}

/// Where parked loops wait: each arrives and blocks until the coordinator releases them all.
private final class ParkGate: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var changed = pthread_cond_t()
    private var arrived = 0
    private var released = false
    private let expected: Int

    init(expected: Int) {
        self.expected = expected
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&changed, nil)
    }

    deinit {
        pthread_cond_destroy(&changed)
        pthread_mutex_destroy(&mutex)
    }

    /// On a parked loop's thread: arrive, then wait for the release.
    func park() {
        pthread_mutex_lock(&mutex)
        arrived += 1
        pthread_cond_broadcast(&changed)
        while !released { pthread_cond_wait(&changed, &mutex) }
        pthread_mutex_unlock(&mutex)
    }

    func waitUntilAllParked() {
        pthread_mutex_lock(&mutex)
        while arrived < expected { pthread_cond_wait(&changed, &mutex) }
        pthread_mutex_unlock(&mutex)
    }

    func release() {
        pthread_mutex_lock(&mutex)
        released = true
        pthread_cond_broadcast(&changed)
        pthread_mutex_unlock(&mutex)
    }
}

/// State that one loop's thread alone touches, carried through other loops' tasks.
private final class LoopBound<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}
