import NIOCore
import PostgresWire

/// FrameScanner: whatever the input and however it is cut into reads (with stops mid-read), it visits the
/// messages a plain header walk finds, with the same ends, lengths and bodies, and fails at the same header.
/// Input: flags byte, seed byte, then the stream.
func fuzzFrameScanner(_ data: [UInt8]) {
    var input = FuzzInput(data)
    let flags = input.byte()
    let seed = input.byte()
    let stream = input.rest()[...]
    let captureAll = flags & 1 == 1
    // A small limit makes messageTooLarge reachable with short inputs.
    let maxLength = flags & 2 == 0 ? Int(Int32.max) : 4 + Int(seed)
    let stopEvery = Int(flags >> 2 & 3)  // 0: never stop mid-read; else stop after every n-th message

    let (expected, outcome) = referenceWalk(stream, maxLength: maxLength)
    var results: [ScanResult] = []
    for (planIndex, plan) in splitPlans(total: stream.count, seed: seed).enumerated() {
        let result = scan(stream, plan: plan, captureAll: captureAll, maxLength: maxLength, stopEvery: stopEvery,
                          junk: planIndex)
        check(result.visits.map(\.message) == expected, "visited \(result.visits.map(\.message)) expected \(expected) plan \(plan)")
        for visit in result.visits {
            let body = stream[stream.startIndex + visit.message.start + 5..<stream.startIndex + visit.message.end]
            check(visit.body == (captureAll ? Array(body) : nil), "body of message at \(visit.message.start)")
        }
        switch outcome {
        case .invalid(_, let length):
            let error = length < 4 ? WireError.invalidLength(length) : WireError.messageTooLarge(length)
            check(result.error == error, "error \(String(describing: result.error)) expected \(error)")
        case .open(let next):
            check(result.error == nil, "unexpected error \(String(describing: result.error))")
            check(result.atBoundary == (next == stream.count), "boundary flag with \(stream.count - next) bytes pending")
            if next < stream.count {
                let seen = stream.count - next
                check(result.partial?.id == stream[stream.startIndex + next] && result.partial?.bytesSeen == seen,
                      "partialMessage \(String(describing: result.partial)) expected \(seen) bytes")
            } else {
                check(result.partial == nil, "partialMessage at a boundary")
            }
        }
        results.append(result)
    }
    for result in results.dropFirst() {
        check(result == results[0], "different results for different splits")
    }
}

private struct ScanVisit: Equatable {
    var message: ReferenceMessage
    var body: [UInt8]?
}

private struct ScanResult: Equatable {
    var visits: [ScanVisit] = []
    var error: WireError?
    var atBoundary = true
    var partial: Partial?

    struct Partial: Equatable {
        var id: UInt8
        var bytesSeen: Int
    }
}

private func scan(
    _ stream: ArraySlice<UInt8>, plan: [Int], captureAll: Bool, maxLength: Int, stopEvery: Int, junk: Int
) -> ScanResult {
    var scanner = FrameScanner(capturedIDs: captureAll ? .all : MessageIDSet(), maxMessageLength: maxLength)
    var result = ScanResult()
    var fed = 0
    var count = 0
    for size in plan {
        let read = makeRead(stream[stream.startIndex + fed..<stream.startIndex + fed + size], junk: junk)
        let readStart = fed
        fed += size
        var from = read.readerIndex
        do {
            while true {
                var lastEnd = -1
                let stop = try scanner.scan(read, from: from) { id, body, end, length in
                    check(end > read.readerIndex && end <= read.writerIndex, "end \(end) outside the read")
                    let streamEnd = readStart + end - read.readerIndex
                    result.visits.append(ScanVisit(
                        message: ReferenceMessage(id: id, start: streamEnd - length, length: length - 1),
                        body: body.map(\.bytes)))
                    lastEnd = end
                    count += 1
                    return stopEvery == 0 || count % stopEvery != 0
                }
                guard let stop else { break }
                check(stop == lastEnd, "scan stopped at \(stop), the message ended at \(lastEnd)")
                from = stop
            }
        } catch let error as WireError {
            result.error = error
            return result
        } catch {
            fatalError("unexpected error type \(error)")
        }
    }
    result.atBoundary = scanner.isAtMessageBoundary
    result.partial = scanner.partialMessage.map { ScanResult.Partial(id: $0.id, bytesSeen: $0.bytesSeen) }
    return result
}
