import CLinuxShims
import DequeModule
import Dispatch
import Glibc
import NIOConcurrencyHelpers
import NIOCore

/// What the loop calls when a descriptor it watches is ready.
protocol ReadinessHandler: AnyObject {
    func descriptorReady(_ events: UInt32)
}

/// One thread's event loop: epoll over non-blocking sockets, a sorted list of the few timers a pooler needs
/// (its periodic sweep, the stats line, a closing write's grace), tasks from other threads through an
/// eventfd, and signals through a signalfd.
///
/// Everything but `execute` and `stop` runs on the loop's own thread (or while it is parked, see
/// LoopGroup); the type is marked Sendable for those two. Connections read into one buffer that
/// the loop lends them (`readBuffer`): an idle connection holds none (PgBouncer's pkt_buf model).
public final class EngineLoop: @unchecked Sendable {
    private let epollFD: Int32
    private let wakeFD: Int32
    /// The handler of each watched descriptor, indexed by the descriptor.
    private var handlers: [ReadinessHandler?] = []
    private var timers: [ScheduledTimer] = []
    private var nextTimerID = 0
    /// Work that must not run inside the current event (a closed connection's goodbye to its owner).
    private var deferredTasks: [() -> Void] = []
    /// The batch being run; swapped with `deferredTasks` so that neither array is reallocated per event.
    private var runningTasks: [() -> Void] = []
    /// Tasks waiting for the loop's next poll (`afterNextPoll`); taken just before it.
    private var afterPollTasks: [() -> Void] = []
    private var runningAfterPollTasks: [() -> Void] = []
    private let crossThreadLock = NIOLock()
    private var crossThreadTasks: Deque<() -> Void> = []
    private var stopRequested = false
    private let readyEvents: UnsafeMutablePointer<lifeguard_ready_event>
    private static let maxEventsPerWait: Int32 = 256
    /// The buffer every read lands in. A consumer that keeps part of it (bytes waiting for a server, a
    /// write the peer has not taken yet) keeps that storage; the next read then gets a fresh one.
    var readBuffer: ByteBuffer
    static let readBufferSize = 32 * 1024

    public init() throws {
        epollFD = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epollFD >= 0 else { throw SocketError("epoll_create1") }
        wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        guard wakeFD >= 0 else { throw SocketError("eventfd") }
        readyEvents = .allocate(capacity: Int(Self.maxEventsPerWait))
        readBuffer = ByteBufferAllocator().buffer(capacity: Self.readBufferSize)
        try watch(wakeFD, events: UInt32(EPOLLIN.rawValue), handler: WakeHandler(loop: self))
    }

    deinit {
        readyEvents.deallocate()
        Glibc.close(wakeFD)
        Glibc.close(epollFD)
    }

    // MARK: Running

    /// Runs until `stop()`.
    public func run() {
        stopRequested = false
        while !stopRequested {
            runOnce(maxWaitMilliseconds: -1)
        }
    }

    /// Waits for events at most `maxWaitMilliseconds` (-1: until the next timer), then handles them, the
    /// due timers and the deferred tasks.
    public func runOnce(maxWaitMilliseconds: Int32) {
        var timeout = millisecondsToNextTimer()
        if maxWaitMilliseconds >= 0, timeout < 0 || timeout > maxWaitMilliseconds { timeout = maxWaitMilliseconds }
        if !deferredTasks.isEmpty { timeout = 0 }
        if !afterPollTasks.isEmpty {
            swap(&afterPollTasks, &runningAfterPollTasks)
            timeout = 0
        }
        let count = lifeguard_epoll_wait(epollFD, readyEvents, Self.maxEventsPerWait, timeout)
        if count > 0 {
            for index in 0..<Int(count) {
                let event = readyEvents[index]
                let fd = Int(event.fd)
                if fd < handlers.count, let handler = handlers[fd] {
                    handler.descriptorReady(event.events)
                }
            }
        }
        runDeferredTasks()
        runDueTimers()
        runDeferredTasks()
        if !runningAfterPollTasks.isEmpty {
            for task in runningAfterPollTasks { task() }
            runningAfterPollTasks.removeAll(keepingCapacity: true)
            runDeferredTasks()
        }
    }

    /// Makes `run()` return after the current event. On the loop's thread, or through `execute`.
    public func stop() {
        stopRequested = true
    }

    // MARK: Tasks

    /// Runs `task` on the loop's thread, from any thread.
    public func execute(_ task: @escaping @Sendable () -> Void) {
        crossThreadLock.withLock { crossThreadTasks.append(task) }
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }

    /// Runs the tasks other threads sent; also called by a loop waiting to park the others (LoopGroup).
    /// Taken one at a time, so that a task which itself waits for another loop (parking the others) still
    /// lets this call, nested inside it, run the tasks queued behind it, such as that loop's park request.
    func runCrossThreadTasks() {
        var counter: UInt64 = 0
        _ = Glibc.read(wakeFD, &counter, 8)
        while let task = crossThreadLock.withLock({ crossThreadTasks.popFirst() }) {
            task()
        }
    }

    /// Runs `task` on the loop's thread, from any thread, between two events: never nested inside another
    /// task or handler (a cross-thread task can run inside a loop that waits to park the others).
    public func executeBetweenEvents(_ task: @escaping @Sendable () -> Void) {
        execute { [unowned(unsafe) self] in self.deferTask(task) }
    }

    /// Runs `task` on the loop, from any thread, once the loop has handled everything its sockets held when
    /// this was called: after its next poll and the events, timers and deferred work that poll brings.
    /// A peer's bytes sent before the call (a Terminate) have then been read and acted on.
    public func afterNextPoll(_ task: @escaping @Sendable () -> Void) {
        // Queued from inside the loop, so the poll that runs it begins after this call.
        execute { [unowned(unsafe) self] in self.afterPollTasks.append(task) }
    }

    /// Runs `task` on the loop once the current event has been handled.
    public func deferTask(_ task: @escaping () -> Void) {
        deferredTasks.append(task)
    }

    private func runDeferredTasks() {
        while !deferredTasks.isEmpty {
            swap(&deferredTasks, &runningTasks)
            for task in runningTasks { task() }
            runningTasks.removeAll(keepingCapacity: true)
        }
    }

    /// Runs `work` on a background thread (a blocking lookup, a PBKDF2) and hands its result to `then` on
    /// the loop.
    public func offload<Result>(_ work: @escaping @Sendable () -> Result, then: @escaping (Result) -> Void) {
        let completion = UncheckedBox(then)
        DispatchQueue.global().async {
            let result = UncheckedBox(work())
            self.execute { completion.value(result.value) }
        }
    }

    // MARK: Timers

    public struct TimerID: Hashable, Sendable {
        fileprivate let value: Int
    }

    private struct ScheduledTimer {
        var id: Int
        var deadline: UInt64
        var interval: UInt64?
        var task: () -> Void
    }

    /// Runs `task` once, `seconds` from now.
    @discardableResult
    public func schedule(after seconds: Double, _ task: @escaping () -> Void) -> TimerID {
        addTimer(delay: Self.nanoseconds(seconds), interval: nil, task)
    }

    /// Runs `task` every `seconds`, the first time `seconds` from now.
    @discardableResult
    public func scheduleRepeating(every seconds: Double, _ task: @escaping () -> Void) -> TimerID {
        let interval = max(Self.nanoseconds(seconds), 1_000_000)
        return addTimer(delay: interval, interval: interval, task)
    }

    public func cancel(_ timer: TimerID) {
        timers.removeAll { $0.id == timer.value }
    }

    private func addTimer(delay: UInt64, interval: UInt64?, _ task: @escaping () -> Void) -> TimerID {
        nextTimerID += 1
        let timer = ScheduledTimer(id: nextTimerID, deadline: Self.now() + delay, interval: interval, task: task)
        let position = timers.firstIndex { $0.deadline > timer.deadline } ?? timers.endIndex
        timers.insert(timer, at: position)
        return TimerID(value: nextTimerID)
    }

    private func millisecondsToNextTimer() -> Int32 {
        guard let first = timers.first else { return -1 }
        let now = Self.now()
        guard first.deadline > now else { return 0 }
        return Int32(clamping: (first.deadline - now + 999_999) / 1_000_000)
    }

    private func runDueTimers() {
        let now = Self.now()
        while let first = timers.first, first.deadline <= now {
            timers.removeFirst()
            if let interval = first.interval {
                var next = first
                next.deadline = now + interval
                let position = timers.firstIndex { $0.deadline > next.deadline } ?? timers.endIndex
                timers.insert(next, at: position)
            }
            first.task()
        }
    }

    static func now() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

    private static func nanoseconds(_ seconds: Double) -> UInt64 {
        UInt64(max(seconds, 0) * 1e9)
    }

    // MARK: Descriptors

    func watch(_ fd: Int32, events: UInt32, handler: ReadinessHandler) throws {
        let index = Int(fd)
        if index >= handlers.count {
            handlers.append(contentsOf: repeatElement(nil, count: max(index + 1 - handlers.count, handlers.count)))
        }
        handlers[index] = handler
        guard lifeguard_epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, events) == 0 else {
            handlers[index] = nil
            throw SocketError("epoll_ctl")
        }
    }

    func changeEvents(of fd: Int32, to events: UInt32) {
        _ = lifeguard_epoll_ctl(epollFD, EPOLL_CTL_MOD, fd, events)
    }

    /// Forgets `fd`; the caller closes it (which takes it out of the epoll set).
    func unwatch(_ fd: Int32) {
        if Int(fd) < handlers.count { handlers[Int(fd)] = nil }
    }

    /// Forgets `fd` and takes it out of the epoll set, for a descriptor that stays open (a listening socket
    /// other loops still watch).
    func unwatchAndRemove(_ fd: Int32) {
        unwatch(fd)
        _ = lifeguard_epoll_ctl(epollFD, EPOLL_CTL_DEL, fd, 0)
    }

    // MARK: Signals

    /// Hands the signals of `numbers` to `handler` on the loop. They must be blocked in every thread
    /// (pthread_sigmask before any thread starts), so that only the signalfd sees them.
    public func handleSignals(_ numbers: [Int32], _ handler: @escaping (Int32) -> Void) throws {
        var mask = sigset_t()
        sigemptyset(&mask)
        for number in numbers { sigaddset(&mask, number) }
        let fd = signalfd(-1, &mask, Int32(SFD_NONBLOCK | SFD_CLOEXEC))
        guard fd >= 0 else { throw SocketError("signalfd") }
        try watch(fd, events: UInt32(EPOLLIN.rawValue), handler: SignalHandler(fd: fd, handler: handler))
    }
}

/// Drains the loop's eventfd and runs the tasks other threads queued.
private final class WakeHandler: ReadinessHandler {
    unowned let loop: EngineLoop
    init(loop: EngineLoop) { self.loop = loop }
    func descriptorReady(_ events: UInt32) { loop.runCrossThreadTasks() }
}

private final class SignalHandler: ReadinessHandler {
    let fd: Int32
    let handler: (Int32) -> Void
    init(fd: Int32, handler: @escaping (Int32) -> Void) {
        self.fd = fd
        self.handler = handler
    }

    func descriptorReady(_ events: UInt32) {
        var info = signalfd_siginfo()
        while Glibc.read(fd, &info, MemoryLayout<signalfd_siginfo>.size) == MemoryLayout<signalfd_siginfo>.size {
            handler(Int32(info.ssi_signo))
        }
    }
}

/// Carries a value to the loop's thread, which alone touches it.
private struct UncheckedBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// A failed system call, worded as `operation: strerror (errno: N)`.
public struct SocketError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let errorNumber: Int32
    /// Said instead of the system's text, for a failure that has no errno (TLS).
    private let reason: String?

    public init(_ operation: String, errorNumber: Int32 = errno) {
        self.operation = operation
        self.errorNumber = errorNumber
        self.reason = nil
    }

    public init(_ operation: String, reason: String) {
        self.operation = operation
        self.errorNumber = 0
        self.reason = reason
    }

    public var description: String {
        if let reason { return "\(operation): \(reason)" }
        return "\(operation): \(String(cString: strerror(errorNumber))) (errno: \(errorNumber))"
    }
}
