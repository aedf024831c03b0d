import LifeguardCore
import NIOCore
import PostgresWire

/// Iteration counts a fuzz input may make PBKDF2 run: larger ones would spend the run hashing.
private let maxIterations = 16

/// SCRAM-SHA-256 on both sides. Mode 0: Lifeguard as server (SCRAMServerExchange, ClientAuthentication) fed
/// client-first/client-final bytes, which must never log in. Mode 1: Lifeguard as client (SCRAMClientExchange,
/// ServerAuthentication) fed server-first/server-final bytes, whose signature must never verify. Mode 2: a real
/// exchange between the two, optionally with one byte of one message altered; unaltered it must succeed,
/// pass-through with the recovered keys included. Input: mode byte, then length-prefixed fields.
func fuzzSCRAM(_ data: [UInt8]) {
    var input = FuzzInput(data)
    let flags = input.byte()
    switch flags % 3 {
    case 0: fuzzSCRAMServer(&input, flags: flags)
    case 1: fuzzSCRAMClient(&input, flags: flags)
    default: fuzzSCRAMRoundTrip(&input, flags: flags)
    }
}

private struct FuzzDerivations: PlainPasswordDerivations {
    func scramSecret(user: String, password: String) -> SCRAMSecret {
        SCRAMSecret.derive(password: password, salt: Array("fuzzsalt".utf8), iterations: 2)
    }
    func md5Hash(user: String, password: String) -> String {
        MD5Password.hash(password: password, user: user)
    }
}

/// 18 nonce bytes, as the callers' random generators give (an empty nonce is refused by design).
private func nonce(_ input: inout FuzzInput) -> [UInt8] {
    let bytes = input.bytes(18)
    return bytes + Array(repeating: 0x42, count: 18 - bytes.count)
}

/// A userlist secret from the input, with its iteration count kept small.
private func boundedSecret(_ text: String) -> PasswordSecret {
    let secret = PasswordSecret(parsing: text)
    if case .scram(var scram) = secret, scram.iterations > maxIterations {
        scram.iterations = 1 + scram.iterations % maxIterations
        return .scram(scram)
    }
    return secret
}

private func fuzzSCRAMServer(_ input: inout FuzzInput, flags: UInt8) {
    let password = String(decoding: input.field(), as: UTF8.self)
    let secret = SCRAMSecret.derive(password: password, salt: input.field() + [1], iterations: 1 + Int(flags >> 4 & 3))
    let clientFirst = input.field()
    let clientFinal = input.field()
    var exchange = SCRAMServerExchange(secret: secret, nonceBytes: nonce(&input))
    _ = exchange.receiveClientFirst(clientFirst)
    if case .success = exchange.receiveClientFinal(clientFinal) {
        fatalError("SCRAM proof accepted without the password: \(hex(clientFirst)) / \(hex(clientFinal))")
    }
    check(exchange.recoveredClientKey == nil, "client key recovered from a failed exchange")

    // The same through ClientAuthentication, whose `p` bodies carry the mechanism and a length.
    let authType: AuthType = flags & 0x40 == 0 ? .scramSHA256 : .md5
    let known = flags & 0x80 != 0
    let storedSecret = known ? boundedSecret(String(decoding: input.field(), as: UTF8.self)) : nil
    guard let startup = try? ClientStartup(protocolVersion: StartupPacket.protocolVersion3,
                                           parameters: [("user", "fuzz")], ignored: []) else { fatalError("startup") }
    var authentication = ClientAuthentication(
        startup: startup, authType: authType, secret: storedSecret, requireUserListEntry: true,
        mockKey: Array(repeating: 9, count: 32), derivations: FuzzDerivations(), random: { Array(repeating: 7, count: $0) })
    var reply = ByteBuffer()
    guard (try? authentication.start(into: &reply)) == .awaitingPassword else { fatalError("no challenge for \(authType)") }
    while !input.isAtEnd {
        let body = ByteBuffer(bytes: input.field())
        reply.clear()
        guard let step = try? authentication.receive(body, into: &reply) else { return }
        check(step != .authenticated, "logged in with \(authType) from fuzz bytes without the password")
    }
}

private func fuzzSCRAMClient(_ input: inout FuzzInput, flags: UInt8) {
    let password = String(decoding: input.field(), as: UTF8.self)
    let keys = (clientKey: input.bytes(32), serverKey: input.bytes(32))
    let serverFirst = input.field()
    let serverFinal = input.field()
    // A password makes the client run PBKDF2 with the server's count: keys are used above the bound.
    let usePassword = flags & 0x10 != 0 && (iterationCount(serverFirst) ?? 0) <= maxIterations
    var exchange = SCRAMClientExchange(
        credentials: usePassword ? .password(password) : .keys(clientKey: keys.clientKey, serverKey: keys.serverKey),
        nonceBytes: nonce(&input))
    let first = exchange.clientFirstMessage()
    check(first.starts(with: Array("n,,n=,r=".utf8)), "client-first-message \(hex(first))")
    let accepted = exchange.receiveServerFirst(serverFirst)
    if case .success(let final) = accepted {
        check(final.starts(with: Array("c=biws,r=".utf8)), "client-final-message \(hex(final))")
        if case .success = exchange.verifyServerFinal(serverFinal) {
            fatalError("server signature verified from fuzz bytes: \(hex(serverFirst)) / \(hex(serverFinal))")
        }
    } else {
        check({ if case .failure = exchange.verifyServerFinal(serverFinal) { true } else { false } }(),
              "server-final verified after a refused server-first")
    }

    // ServerAuthentication: a sequence of authentication requests as a server would send them.
    let secret = boundedSecret(String(decoding: input.field(), as: UTF8.self))
    var authentication = ServerAuthentication(
        user: "fuzz", secret: secret, scramKeys: flags & 0x20 != 0 ? keys : nil,
        random: { Array(repeating: 5, count: $0) })
    let codes: [Int32] = [0, 3, 5, 10, 11, 12, 7]
    while !input.isAtEnd {
        let code = codes[Int(input.byte()) % codes.count]
        let data = input.field()
        if code == AuthenticationCode.saslContinue, case .plain = secret, (iterationCount(data) ?? 0) > maxIterations {
            continue
        }
        var reply = ByteBuffer()
        guard (try? authentication.receive(code: code, data: ByteBuffer(bytes: data), into: &reply)) != nil else { return }
    }
}

/// The `i=` value of a server-first-message, as far as it can be read.
private func iterationCount(_ message: [UInt8]) -> Int? {
    let fields = message.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false)
    guard fields.count >= 3, fields[2].starts(with: Array("i=".utf8)) else { return nil }
    let digits = fields[2].dropFirst(2)
    guard !digits.isEmpty, digits.count <= 18, digits.allSatisfy({ (0x30...0x39).contains($0) }) else { return nil }
    return Int(String(decoding: digits, as: UTF8.self))
}

private func fuzzSCRAMRoundTrip(_ input: inout FuzzInput, flags: UInt8) {
    let password = String(decoding: input.field(), as: UTF8.self)
    let salt = input.field() + [0x5A]
    let secret = SCRAMSecret.derive(password: password, salt: salt, iterations: 1 + Int(flags >> 4 & 3))
    check(SCRAMSecret(parsing: secret.encoded) == secret, "secret encoding round trip")
    let clientNonce = nonce(&input)
    let serverNonce = nonce(&input)
    // Which message to alter (0: none), where, and how.
    let target = input.byte() % 5
    let position = Int(input.byte())
    let change = input.byte() | 1

    func alter(_ message: [UInt8], _ index: UInt8) -> [UInt8] {
        guard target == index, !message.isEmpty else { return message }
        var altered = message
        altered[position % altered.count] ^= change
        return altered
    }

    var client = SCRAMClientExchange(credentials: .password(password), nonceBytes: clientNonce)
    var server = SCRAMServerExchange(secret: secret, nonceBytes: serverNonce)
    let outcome = exchange(&client, &server, alter)
    if target == 0 {
        check(outcome == .verified, "unaltered exchange failed: \(outcome)")
        guard let clientKey = server.recoveredClientKey else { fatalError("no recovered key") }
        // Pass-through: the recovered keys log in to a server holding the same secret.
        var passThrough = SCRAMClientExchange(
            credentials: .keys(clientKey: clientKey, serverKey: secret.serverKey), nonceBytes: serverNonce)
        var secondServer = SCRAMServerExchange(secret: secret, nonceBytes: clientNonce)
        check(exchange(&passThrough, &secondServer, { message, _ in message }) == .verified, "pass-through failed")
    }
}

private enum ExchangeOutcome: Equatable {
    case refusedAt(Int)
    case verified
}

private func exchange(
    _ client: inout SCRAMClientExchange, _ server: inout SCRAMServerExchange, _ alter: ([UInt8], UInt8) -> [UInt8]
) -> ExchangeOutcome {
    guard case .success(let serverFirst) = server.receiveClientFirst(alter(client.clientFirstMessage(), 1)) else {
        return .refusedAt(1)
    }
    guard case .success(let clientFinal) = client.receiveServerFirst(alter(serverFirst, 2)) else { return .refusedAt(2) }
    guard case .success(let serverFinal) = server.receiveClientFinal(alter(clientFinal, 3)) else { return .refusedAt(3) }
    guard case .success = client.verifyServerFinal(alter(serverFinal, 4)) else { return .refusedAt(4) }
    return .verified
}
