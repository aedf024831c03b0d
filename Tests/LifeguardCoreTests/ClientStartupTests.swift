import Testing

@testable import LifeguardCore
import PostgresWire

private let v3 = StartupPacket.protocolVersion3

private func startup(
    _ parameters: [(String, String)], ignored: [String] = [], version: Int32 = v3
) throws(PoolerError) -> ClientStartup {
    try ClientStartup(protocolVersion: version, parameters: parameters, ignored: IgnoredStartupParameters(ignored))
}

/// The PoolerError thrown for these parameters, or nil when they are accepted.
private func startupError(
    _ parameters: [(String, String)], ignored: [String] = [], version: Int32 = v3
) -> PoolerError? {
    do {
        _ = try startup(parameters, ignored: ignored, version: version)
        return nil
    } catch {
        return error
    }
}

@Suite struct ClientStartupTests {
    // MARK: User and database

    @Test func userAndDatabase() throws {
        let s = try startup([("user", "alice"), ("database", "shop")])
        #expect(s.user == "alice")
        #expect(s.database == "shop")
        #expect(s.parameters.isEmpty)
        #expect(s.unsupportedProtocolOptions.isEmpty)
        #expect(s.minorProtocolVersion == 0)
    }

    // MARK: Replication

    @Test func replicationValuesAreReadAsPostgreSQLReadsThem() throws {
        for (value, mode) in [
            ("database", ReplicationMode.logical), ("true", .physical), ("on", .physical), ("YES", .physical),
            ("1", .physical), ("t", .physical), ("false", .none), ("off", .none), ("0", .none), ("n", .none),
        ] {
            #expect(try startup([("user", "u"), ("replication", value)]).replication == mode, "\(value)")
        }
        #expect(try startup([("user", "u")]).replication == ReplicationMode.none)
        // "Database" is not "database", and "o" is neither on nor off.
        for bad in ["Database", "o", "maybe", ""] {
            #expect(startupError([("user", "u"), ("replication", bad)])?.message
                == "invalid value for parameter \"replication\": \"\(bad)\"")
        }
    }

    /// A replication connection's `options` go to its own server as they are, whatever GUC they set,
    /// wherever `replication` is in the packet; an ordinary client's are checked.
    @Test func aReplicationClientsOptionsAreKeptAsTheyAre() throws {
        let options = "-c enable_seqscan=off -c work_mem=64MB"
        let replication = try startup([("user", "u"), ("options", options), ("replication", "database")])
        #expect(replication.replicationOptions == options)
        #expect(replication.parameters.isEmpty)
        #expect(startupError([("user", "u"), ("options", options)])?.message
            == "unsupported startup parameter in options: enable_seqscan")
        // Other startup parameters are checked as for any client.
        #expect(startupError([("user", "u"), ("replication", "true"), ("work_mem", "1MB")])?.message
            == "unsupported startup parameter: work_mem")
        let physical = try startup([("user", "u"), ("replication", "yes"), ("application_name", "standby")])
        #expect(physical.parameters["application_name"] == "standby")
        #expect(ReplicationMode.physical.parameterValue == "yes")
        #expect(ReplicationMode.logical.parameterValue == "database")
    }

    @Test func databaseDefaultsToUser() throws {
        #expect(try startup([("user", "alice")]).database == "alice")
        #expect(try startup([("user", "alice"), ("database", "")]).database == "alice")
        #expect(try startup([("database", ""), ("user", "bob")]).database == "bob")
    }

    @Test func missingOrEmptyUserIsAnError() {
        #expect(startupError([("database", "shop")]) == .noUsername)
        #expect(startupError([("user", ""), ("database", "shop")]) == .noUsername)
        #expect(startupError([]) == .noUsername)
        #expect(PoolerError.noUsername.message == "no username supplied")
        #expect(PoolerError.noUsername.sqlState == "08P01")
    }

    @Test func lastValueOfARepeatedUserWins() throws {
        #expect(try startup([("user", "a"), ("user", "b")]).user == "b")
    }

    // MARK: Protocol version

    @Test func protocolTwoIsOld() {
        #expect(startupError([("user", "u")], version: 2 << 16) == .oldProtocol)
        #expect(startupError([("user", "u")], version: 1 << 16) == .oldProtocol)
        #expect(PoolerError.oldProtocol.message == "old V2 protocol not supported")
    }

    @Test func protocolFourIsABadPacket() {
        #expect(startupError([("user", "u")], version: 4 << 16) == .badPacket)
    }

    @Test func minorVersionIsKept() throws {
        #expect(try startup([("user", "u")], version: 3 << 16 | 2).minorProtocolVersion == 2)
        #expect(try startup([("user", "u")], version: 3 << 16 | 0xFFFF).minorProtocolVersion == 0xFFFF)
    }

    // MARK: Parameters

    @Test func unknownParameterIsRejectedWithPgBouncersText() {
        let error = startupError([("user", "u"), ("extra_float_digits", "3")])
        #expect(error == .unsupportedStartupParameter("extra_float_digits"))
        #expect(error?.message == "unsupported startup parameter: extra_float_digits")
        #expect(error?.sqlState == "08P01")
    }

    @Test func ignoredStartupParametersAreCaseInsensitive() throws {
        let s = try startup(
            [("user", "u"), ("extra_float_digits", "3"), ("Search_Path", "x")],
            ignored: ["EXTRA_FLOAT_DIGITS", "search_path"])
        #expect(s.parameters.isEmpty)
        #expect(s.user == "u")
    }

    @Test func trackedParametersAreCanonicalised() throws {
        let s = try startup([
            ("user", "u"), ("datestyle", "ISO, MDY"), ("TIMEZONE", "UTC"), ("client_encoding", "UTF8"),
            ("Application_Name", "psql"), ("intervalstyle", "postgres"), ("standard_conforming_strings", "on"),
        ])
        #expect(s.parameters["DateStyle"] == "ISO, MDY")
        #expect(s.parameters["TimeZone"] == "UTC")
        #expect(s.parameters["client_encoding"] == "UTF8")
        #expect(s.parameters["application_name"] == "psql")
        #expect(s.parameters["IntervalStyle"] == "postgres")
        #expect(s.parameters["standard_conforming_strings"] == "on")
        // Lookups fold case too, as PostgreSQL does for parameter names.
        #expect(s.parameters["datestyle"] == "ISO, MDY")
        #expect(s.parameters["search_path"] == nil)
    }

    @Test func trackedParameterEvenWhenAlsoIgnored() throws {
        let s = try startup([("user", "u"), ("TimeZone", "UTC")], ignored: ["timezone"])
        #expect(s.parameters["TimeZone"] == "UTC")
    }

    @Test func protocolOptionsAreCollected() throws {
        let s = try startup([("user", "u"), ("_pq_.compression", "on"), ("_pq_.other", "1")])
        #expect(s.unsupportedProtocolOptions == ["_pq_.compression", "_pq_.other"])
        #expect(s.parameters.isEmpty)
    }

    // MARK: options

    @Test func optionsDashCSetsTrackedParameters() throws {
        let s = try startup([("user", "u"), ("options", "-c DateStyle=ISO")])
        #expect(s.parameters["DateStyle"] == "ISO")
        let glued = try startup([("user", "u"), ("options", "-ctimezone=UTC   -c    datestyle=SQL")])
        #expect(glued.parameters["TimeZone"] == "UTC")
        #expect(glued.parameters["DateStyle"] == "SQL")
    }

    @Test func optionsDoubleDashSetsTrackedParametersWithDashesAsUnderscores() throws {
        let s = try startup([("user", "u"), ("options", "--client-encoding=LATIN1 --application_name=x=y")])
        #expect(s.parameters["client_encoding"] == "LATIN1")
        #expect(s.parameters["application_name"] == "x=y")
    }

    @Test func emptyOptionsAreFine() throws {
        #expect(try startup([("user", "u"), ("options", "")]).parameters.isEmpty)
        #expect(try startup([("user", "u"), ("options", "   ")]).parameters.isEmpty)
    }

    @Test func untrackedParameterInOptions() {
        let error = startupError([("user", "u"), ("options", "--search_path=x")])
        #expect(error == .unsupportedOptionsParameter("search_path"))
        #expect(error?.message == "unsupported startup parameter in options: search_path")
        #expect(startupError([("user", "u"), ("options", "-c enable_seqscan=false")])?.message
            == "unsupported startup parameter in options: enable_seqscan")
    }

    @Test func ignoredParameterInOptions() throws {
        let s = try startup([("user", "u"), ("options", "-c search_path=x -c DateStyle=ISO")], ignored: ["Search_Path"])
        #expect(s.parameters["DateStyle"] == "ISO")
        #expect(s.parameters["search_path"] == nil)
    }

    @Test(arguments: ["-d", "foo", "-c", "-c timezone", "--timezone", "-c DateStyle=ISO x", "-"])
    func badOptionsSyntax(options: String) {
        let error = startupError([("user", "u"), ("options", options)])
        #expect(error == .unsupportedOptionsSyntax, "options \(options)")
        #expect(error?.message
            == "unsupported options startup parameter: only '-c config=val' and '--config=val' are allowed")
    }

    @Test func ignoringOptionsAcceptsAnyUnknownOptionsParameter() throws {
        // PgBouncer: with "options" in ignore_startup_parameters, unknown settings in options are ignored.
        let s = try startup([("user", "u"), ("options", "-c enable_seqscan=false")], ignored: ["options"])
        #expect(s.parameters["enable_seqscan"] == nil)
    }

    /// PgBouncer still parses options when "options" is ignored and applies the tracked settings
    /// (its test_options_startup_param: "Even though we have options in ignore_startup_parameters, we still
    /// parse and configure any values in it that we support").
    @Test func ignoringOptionsStillAppliesTrackedSettings() throws {
        let s = try startup([("user", "u"), ("options", "-c timezone=Portugal -c enable_seqscan=off")], ignored: ["options"])
        #expect(s.parameters["TimeZone"] == "Portugal")
    }

    /// PgBouncer's options parser honours backslash escapes, as PostgreSQL does
    /// (`-c datestyle=German,\ YMD` sets "German, YMD").
    @Test func optionsBackslashEscapedSpace() throws {
        let s = try startup([("user", "u"), ("options", #"-c timezone=Portugal  -c    datestyle=German,\ YMD"#)])
        #expect(s.parameters["TimeZone"] == "Portugal")
        #expect(s.parameters["DateStyle"] == "German, YMD")
    }

    // MARK: ParameterSet

    @Test func setStatementsQuoteValues() throws {
        var client = ParameterSet()
        client.update(name: "application_name", value: "it's")
        #expect(
            client.setStatements(toMatch: ParameterSet())
                == "SELECT pg_catalog.set_config(E'application_name', E'it''s', false)")
    }

    /// A value that would end the literal under standard_conforming_strings = off (backslash, then quote)
    /// or end the statement stays one literal: quotes and backslashes are doubled in an escape string.
    @Test func literalsSurviveBackslashesAndQuotes() {
        #expect(TrackedParameter.literal(#"x\'; CREATE TABLE y(); --"#) == #"E'x\\''; CREATE TABLE y(); --'"#)
        #expect(TrackedParameter.literal("public; DROP TABLE t; --") == "E'public; DROP TABLE t; --'")
        #expect(TrackedParameter.literal("") == "E''")
    }

    @Test func setStatementsFollowTrackedOrderAndSkipEqualValues() {
        var client = ParameterSet()
        client.update(name: "IntervalStyle", value: "iso_8601")
        client.update(name: "TimeZone", value: "UTC")
        client.update(name: "DateStyle", value: "iso, mdy")
        client.update(name: "client_encoding", value: "UTF8")
        var server = ParameterSet()
        server.update(name: "DateStyle", value: "ISO, MDY")  // same value, different case: no SET
        server.update(name: "TimeZone", value: "Europe/Paris")
        server.update(name: "client_encoding", value: "utf8")
        #expect(
            client.setStatements(toMatch: server)
                == "SELECT pg_catalog.set_config(E'TimeZone', E'UTC', false), "
                + "pg_catalog.set_config(E'IntervalStyle', E'iso_8601', false)")
    }

    @Test func defaultTransactionReadOnlyIsTracked() {
        var client = ParameterSet()
        client.update(name: "default_transaction_read_only", value: "on")
        #expect(
            client.setStatements(toMatch: ParameterSet())
                == "SELECT pg_catalog.set_config(E'default_transaction_read_only', E'on', false)")
    }

    @Test func caseInsensitiveEqualityMeansNoSet() {
        var client = ParameterSet()
        client.update(name: "datestyle", value: "ISO, MDY")
        var server = ParameterSet()
        server.update(name: "DateStyle", value: "iso, mdy")
        #expect(client.setStatements(toMatch: server) == nil)
    }

    /// PgBouncer's varcache_apply debug line spells the changes as SET and RESET commands.
    @Test func changesAreDescribedAsSetCommands() {
        var client = ParameterSet()
        client.update(name: "DateStyle", value: "ISO")
        client.update(name: "application_name", value: "it's")
        var server = ParameterSet()
        server.update(name: "DateStyle", value: "ISO, MDY")
        server.update(name: "IntervalStyle", value: "iso_8601")
        let changes = client.changes(toMatch: server)
        #expect(changes.map(\.name) == ["DateStyle", "application_name", "IntervalStyle"])
        #expect(ParameterSet.describe(changes) == "SET DateStyle='ISO'; SET application_name='it''s'; RESET IntervalStyle")
        #expect(client.changes(toMatch: client).isEmpty)
    }

    /// After a sync the client takes the server's spelling of each value, and hears which changed.
    @Test func adoptingTheServersSpellingReportsTheRespelledValues() {
        var client = ParameterSet()
        client.update(name: "DateStyle", value: "ISO")
        client.update(name: "TimeZone", value: "UTC")
        var server = ParameterSet()
        server.update(name: "DateStyle", value: "ISO, MDY")
        server.update(name: "TimeZone", value: "UTC")
        let respelled = client.adoptSpelling(from: server)
        #expect(respelled.map { "\($0.name): \($0.from) -> \($0.to)" } == ["DateStyle: ISO -> ISO, MDY"])
        #expect(client["DateStyle"] == "ISO, MDY")
    }

    /// A value the client lacks (one PostgreSQL does not report, so no default is known) while the server
    /// has one from another client is reset, never inherited.
    @Test func valueTheClientLacksIsReset() {
        var server = ParameterSet()
        server.update(name: "IntervalStyle", value: "iso_8601")
        #expect(
            ParameterSet().setStatements(toMatch: server) == "SELECT pg_catalog.set_config(E'IntervalStyle', NULL, false)")
        #expect(ParameterSet().setStatements(toMatch: ParameterSet()) == nil)
    }

    @Test func extraNamesFollowTheBuiltInOnesOnce() {
        let names = TrackedParameter.names(adding: ["intervalstyle", "search_path", "SEARCH_PATH", "citus.x"])
        #expect(names == TrackedParameter.builtInNames + ["search_path", "citus.x"])
    }

    @Test func updateOnlyAcceptsTrackedNames() {
        var set = ParameterSet()
        let tracked = set.update(name: "TIMEZONE", value: "UTC")
        let untracked = set.update(name: "search_path", value: "x")
        #expect(tracked)
        #expect(!untracked)
        #expect(set["TimeZone"] == "UTC")
        #expect(set["search_path"] == nil)
        #expect(TrackedParameter.canonicalName("dateSTYLE") == "DateStyle")
        #expect(TrackedParameter.canonicalName("work_mem") == nil)
    }

    @Test func fillUnsetKeepsExistingValues() {
        var client = ParameterSet()
        client.update(name: "TimeZone", value: "UTC")
        var defaults = ParameterSet()
        defaults.update(name: "TimeZone", value: "Europe/Paris")
        defaults.update(name: "client_encoding", value: "UTF8")
        defaults.update(name: "DateStyle", value: "ISO, MDY")
        client.fillUnset(from: defaults)
        #expect(client["TimeZone"] == "UTC")
        #expect(client["client_encoding"] == "UTF8")
        #expect(client["DateStyle"] == "ISO, MDY")
        #expect(client.setStatements(toMatch: defaults) == "SELECT pg_catalog.set_config(E'TimeZone', E'UTC', false)")
    }
}

@Suite struct PeeredCancelKeyTests {
    /// PgBouncer's layout: the peer id in the key's second and third bytes, the TTL in the last two bits.
    @Test func keysCarryThePeerIDAndAFullTTL() {
        let (processID, secret) = PeeredCancelKey.stamp(processID: 0x7FFF_FFFF, secretKey: 0x1234_5670, peerID: 0x1A2B)
        #expect(processID == 0x7F2B_1AFF)
        #expect(PeeredCancelKey.peerID(of: processID) == 0x1A2B)
        #expect(secret == 0x1234_5673)
        #expect(PeeredCancelKey.ttl(of: secret) == 3)
    }

    @Test func eachForwardTakesOneFromTheTTLAndTheIssuedKeyIsFoundAgain() {
        var secret = PeeredCancelKey.stamp(processID: 1, secretKey: -1 << 2, peerID: 1).secretKey
        for expected in [2, 1, 0] {
            secret = PeeredCancelKey.forwarded(secretKey: secret)
            #expect(PeeredCancelKey.ttl(of: secret) == expected)
            #expect(PeeredCancelKey.asIssued(secretKey: secret) == -1)
        }
    }
}
