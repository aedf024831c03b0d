import Foundation

/// The targets this binary fuzzes, picked by LIFEGUARD_FUZZ_TARGET (scripts/fuzz.sh runs each in turn).
let fuzzTargets: [String: @Sendable ([UInt8]) -> Void] = [
    "frame-scanner": fuzzFrameScanner,
    "startup-packet": fuzzStartupPacket,
    "message-splitter": fuzzMessageSplitter,
    "extended-query": fuzzExtendedQuery,
    "configuration": fuzzConfiguration,
    "userlist": fuzzUserList,
    "admin-command": fuzzAdminCommand,
    "scram": fuzzSCRAM,
    "session": fuzzSession,
]

let selectedTarget: @Sendable ([UInt8]) -> Void = {
    let name = ProcessInfo.processInfo.environment["LIFEGUARD_FUZZ_TARGET"] ?? ""
    guard let target = fuzzTargets[name] else {
        fatalError("set LIFEGUARD_FUZZ_TARGET to one of: \(fuzzTargets.keys.sorted().joined(separator: ", "))")
    }
    return target
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    selectedTarget(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}
