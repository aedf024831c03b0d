import Foundation
import Glibc
import Testing

extension IntegrationTests {
/// The `lifeguard` command itself: options, configuration errors, daemon mode and signals.
@Suite struct CommandLineTests {
    private func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: TestEnvironment.binary)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    private func temporaryFile(_ contents: String, name: String = "bad.ini") throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("lifeguard-cli-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let file = directory.appendingPathComponent(name)
        try contents.write(to: file, atomically: true, encoding: .utf8)
        return file
    }

    private func removeTemporaryFile(_ file: URL) {
        try? FileManager.default.removeItem(at: file.deletingLastPathComponent())
    }

    @Test func versionPrintsTheVersionLine() throws {
        for flag in ["-V", "--version"] {
            let (status, output) = try run([flag])
            #expect(status == 0)
            #expect(output.hasPrefix("Lifeguard "))
        }
    }

    @Test func helpListsTheOptions() throws {
        let (status, output) = try run(["--help"])
        #expect(status == 0)
        for option in ["--daemon", "--quiet", "--verbose", "--user", "--version"] {
            #expect(output.contains(option), "help lacks \(option)")
        }
    }

    @Test func missingConfigurationArgumentIsAnError() throws {
        let (status, output) = try run([])
        #expect(status != 0)
        #expect(output.contains("config"))
    }

    @Test func badValueNamesFileLineAndKey() throws {
        let file = try temporaryFile("[pgbouncer]\nlisten_port = 6432\nmax_client_conn = lots\n")
        defer { removeTemporaryFile(file) }
        let (status, output) = try run([file.path])
        #expect(status == 1)
        #expect(output.contains("bad.ini:3"))
        #expect(output.contains("max_client_conn"))
    }

    /// `--check-config` reads what a start would (the ini, auth_file, hba files, TLS files) and says what is
    /// wrong, without starting anything.
    @Test func checkConfigSaysWhatIsWrongWithoutStarting() throws {
        let port = freePort()
        let good = try temporaryFile("", name: "good.ini")
        defer { removeTemporaryFile(good) }
        let folder = good.deletingLastPathComponent()
        try "\"alice\" \"secret\"\n".write(to: folder.appendingPathComponent("users.txt"), atomically: true, encoding: .utf8)
        try """
            [databases]
            lgtest = host=127.0.0.1
            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = \(port)
            unix_socket_dir =
            auth_file = \(folder.path)/users.txt
            syslog = 1
            """.write(to: good, atomically: true, encoding: .utf8)
        let (status, output) = try run(["--check-config", good.path])
        #expect(status == 0, "\(output)")
        #expect(output.contains("configuration is valid"))
        #expect(output.contains("warning:") && output.contains("syslog"), "warnings are listed")
        #expect((try? RawSocket(port: port)) == nil, "nothing was started")

        let brokenIni = folder.appendingPathComponent("broken.ini")
        try "[pgbouncer]\nlisten_port = 6432\nmax_client_conn = lots\n".write(to: brokenIni, atomically: true, encoding: .utf8)
        let broken = try run(["--check-config", brokenIni.path])
        #expect(broken.status == 1 && broken.output.contains("broken.ini:3") && broken.output.contains("max_client_conn"))

        let missingFiles = folder.appendingPathComponent("missing.ini")
        try """
            [pgbouncer]
            auth_file = \(folder.path)/nobody.txt
            client_tls_sslmode = require
            client_tls_key_file = \(folder.path)/none.key
            client_tls_cert_file = \(folder.path)/none.crt
            """.write(to: missingFiles, atomically: true, encoding: .utf8)
        let missing = try run(["--check-config", missingFiles.path])
        #expect(missing.status == 1)
        #expect(missing.output.contains("nobody.txt"), "the auth_file")
        #expect(missing.output.contains("TLS setup failed") && missing.output.contains("none.crt"), "the TLS files")
    }

    @Test func unreadableConfigurationIsAnError() throws {
        let (status, output) = try run(["/nonexistent/lifeguard.ini"])
        #expect(status == 1)
        #expect(output.contains("/nonexistent/lifeguard.ini"))
    }

    @Test func daemonModeNeedsAPidfile() throws {
        let file = try temporaryFile("[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = \(freePort())\nunix_socket_dir =\n")
        defer { removeTemporaryFile(file) }
        let (status, output) = try run(["-d", file.path])
        #expect(status == 1)
        #expect(output.contains("pidfile"))
    }

    @Test func daemonModeDetachesWritesThePidfileAndStopsOnSIGTERM() throws {
        let port = freePort()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("lifeguard-daemon-\(port)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let pidfile = directory.appendingPathComponent("lifeguard.pid").path
        let logfile = directory.appendingPathComponent("lifeguard.log").path
        let ini = directory.appendingPathComponent("lifeguard.ini")
        try """
            [databases]
            lgtest = host=127.0.0.1 port=\(TestEnvironment.postgresPort!)
            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = \(port)
            unix_socket_dir =
            auth_type = trust
            pidfile = \(pidfile)
            logfile = \(logfile)
            """.write(to: ini, atomically: true, encoding: .utf8)
        let (status, _) = try run(["-d", ini.path])
        #expect(status == 0, "the foreground part of -d exits at once")
        var pid: Int32 = 0
        for _ in 0..<100 {
            if let text = try? String(contentsOfFile: pidfile, encoding: .utf8), let value = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                pid = value
                if (try? RawSocket(port: port)) != nil { break }
            }
            usleep(50_000)
        }
        try #require(pid > 0, "no pidfile")
        do {
            // SIGTERM waits for clients to leave, so this one leaves first.
            let client = try PGConnection("host=127.0.0.1 port=\(port) user=lg_trust dbname=lgtest")
            #expect(try client.value("SELECT 1") == "1")
        }
        kill(pid, SIGTERM)
        for _ in 0..<100 where kill(pid, 0) == 0 { usleep(50_000) }
        #expect(kill(pid, 0) != 0, "daemon still running after SIGTERM")
        #expect(!FileManager.default.fileExists(atPath: pidfile), "pidfile left behind")
        let log = (try? String(contentsOfFile: logfile, encoding: .utf8)) ?? ""
        #expect(log.contains("LOG process up"))
        try? FileManager.default.removeItem(at: directory)
    }
}
}
