import Testing

@testable import LifeguardCore

@Suite struct HostBasedAccessTests {
    private let rules = #"""
        # TYPE    DATABASE          USER           ADDRESS              METHOD
        local     admin_db          all                                 peer map=operators
        local     all               "all"                               trust     # the user named all
        local     all               all                                 md5
        host      sameuser          all            10.1.0.0/16          trust
        host      app,"odd ""db""", reporting      alice , bob          10.0.0.0/8   scram-sha-256
        host      replication       streamer       10.9.0.0  255.255.0.0  trust
        hostnossl all               all            192.168.1.7/32       password
        hostssl   all               all            all                  cert
        host      all               @ops.txt       all                  md5
        host      all               all            ::1/128              trust
        host      all               all            fd00::/8             md5
        host      all               all            all                  reject
        """#

    private var access: HostBasedAccess {
        var warnings: [String] = []
        let access = HostBasedAccess(
            parsing: rules, file: "/etc/lifeguard/hba.conf",
            readInclude: { path in
                #expect(path == "/etc/lifeguard/ops.txt", "an @file is read next to the rules file")
                return "carol, dave\n# comment\nerin\n"
            },
            warn: { warnings.append($0) })
        #expect(warnings.isEmpty)
        return access
    }

    private func method(
        _ database: String, _ user: String, from address: String? = nil, tls: Bool = false,
        physicalReplication: Bool = false
    ) -> HostBasedAccess.Method {
        let transport: HostBasedAccess.Login.Transport =
            address.map { .tcp(address: HostBasedAccess.ipAddress($0)!) } ?? .unixSocket
        return access.decide(HostBasedAccess.Login(
            transport: transport, tls: tls, database: database, user: user,
            physicalReplication: physicalReplication)).method
    }

    @Test func unixSocketLoginsFollowTheLocalRules() {
        let decision = access.decide(HostBasedAccess.Login(
            transport: .unixSocket, tls: false, database: "admin_db", user: "x", physicalReplication: false))
        #expect(decision == HostBasedAccess.Decision(method: .peer, identMap: "operators", line: 2))
        #expect(method("other", "all") == .trust, "a quoted all is a user name")
        #expect(method("other", "alice") == .md5)
    }

    @Test func namesListsQuotesAndKeywords() {
        #expect(method("bob", "bob", from: "10.1.2.3") == .trust, "sameuser")
        #expect(method("app", "alice", from: "10.200.0.1") == .scramSHA256)
        #expect(method("odd \"db\"", "bob", from: "10.200.0.1") == .scramSHA256, "a comma after a space continues the list")
        #expect(method("reporting", "alice", from: "10.200.0.1") == .scramSHA256)
        #expect(method("app", "mallory", from: "10.200.0.1") == .reject)
        #expect(method("app", "erin", from: "172.16.0.1") == .md5, "names from an @file")
    }

    @Test func addressesMasksAndTLS() {
        #expect(method("replication", "streamer", from: "10.9.200.1", physicalReplication: true) == .trust)
        #expect(method("replication", "streamer", from: "10.8.0.1", physicalReplication: true) == .reject)
        #expect(method("replication", "streamer", from: "10.9.0.1") == .reject,
            "the replication keyword fits replication connections only")
        #expect(method("db", "u", from: "192.168.1.7") == .password)
        #expect(method("db", "u", from: "192.168.1.7", tls: true) == .cert, "hostnossl skips TLS clients")
        #expect(method("db", "u", from: "192.168.1.8") == .reject)
        #expect(method("db", "u", from: "::1") == .trust)
        #expect(method("db", "u", from: "fd12::5") == .md5)
        #expect(method("db", "u", from: "fe80::1") == .reject)
    }

    @Test func noRulesRejectEveryLogin() {
        let decision = HostBasedAccess().decide(HostBasedAccess.Login(
            transport: .unixSocket, tls: false, database: "db", user: "u", physicalReplication: false))
        #expect(decision == HostBasedAccess.Decision(method: .reject, identMap: nil, line: nil))
    }

    @Test func unreadableLinesAreReportedAndSkipped() {
        var warnings: [String] = []
        let access = HostBasedAccess(
            parsing: #"""
                hosts all all all trust
                host all all 10.0.0.0/33 trust
                host all all 10.0.0.0 trust
                host all all example.com trust
                local all all ident
                local "unterminated all trust
                local all all trust option=1
                local all +group trust
                local samerole all trust
                host all @missing.txt all trust
                local all all trust
                """#,
            file: "hba.conf", readInclude: { _ in throw HostBasedAccess.LineError(reason: "missing") },
            warn: { warnings.append($0) })
        #expect(warnings.count == 10)
        #expect(warnings.allSatisfy { $0.hasPrefix("hba.conf line ") && $0.hasSuffix("; the line is skipped") })
        #expect(warnings.first?.contains("line 1: unknown connection type") == true)
        let decision = access.decide(HostBasedAccess.Login(
            transport: .unixSocket, tls: false, database: "db", user: "u", physicalReplication: false))
        #expect(decision.method == .trust && decision.line == 11)
    }
}

@Suite struct IdentMapsTests {
    @Test func mapsSystemUsersToDatabaseUsers() {
        var warnings: [String] = []
        let maps = IdentMaps(
            parsing: #"""
                # MAPNAME  SYSTEM-USERNAME  PG-USERNAME
                ops        deploy           app
                ops        "deploy"         "reporting"
                admins     root             all
                quoted     root             "all"
                regex      /^(.*)$          \1
                broken     only-two
                """#,
            file: "ident.conf", warn: { warnings.append($0) })
        #expect(maps.permits(map: "ops", systemUser: "deploy", user: "app"))
        #expect(maps.permits(map: "ops", systemUser: "deploy", user: "reporting"))
        #expect(!maps.permits(map: "ops", systemUser: "deploy", user: "postgres"))
        #expect(!maps.permits(map: "ops", systemUser: "root", user: "app"))
        #expect(maps.permits(map: "admins", systemUser: "root", user: "anyone"), "all is any user")
        #expect(!maps.permits(map: "quoted", systemUser: "root", user: "anyone"), "a quoted all is a user name")
        #expect(maps.permits(map: "quoted", systemUser: "root", user: "all"))
        #expect(!maps.permits(map: "unknown", systemUser: "root", user: "root"))
        #expect(warnings.count == 2)
        #expect(warnings[0].contains("line 6: regular expressions are not supported"))
        #expect(warnings[1].contains("line 7:"))
    }
}
