import Glibc
import Lifeguard
import LifeguardCore
import Logging

/// The daemon, as the command line asked for it.
struct LifeguardCommand {
    let options: CommandLineOptions

    func run() {
        if options.showHelp {
            print(CommandLineOptions.usage, terminator: "")
            return
        }
        if options.showVersion {
            print(LifeguardVersion.line)
            print("PgBouncer-compatible configuration, console and protocol handling")
            return
        }
        guard let config = options.configPath else { return }
        if options.checkConfig { Glibc.exit(checkConfiguration(config)) }
        // Blocked before any thread exists, so that every thread inherits the mask and the signals wait for
        // the event loop's signalfd instead of reaching a thread that would ignore or die of them.
        let handledSignals = [SIGHUP, SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2]
        var signalMask = sigset_t()
        sigemptyset(&signalMask)
        for signalNumber in handledSignals { sigaddset(&signalMask, signalNumber) }
        pthread_sigmask(SIG_BLOCK, &signalMask, nil)
        signal(SIGPIPE, SIG_IGN)

        let configuration: Configuration
        let authFiles: AuthFiles
        // Logged once the log is open.
        var authFileWarnings: [String] = []
        do {
            configuration = try Configuration.load(path: config)
            authFiles = try AuthFiles.load(configuration.settings) { authFileWarnings.append($0) }
        } catch {
            fail("\(error)")
        }
        let settings = configuration.settings
        TrackedParameter.track(extraNames: settings.trackExtraParameters)
        // Unusable key or certificate files are an error at start; a reload that breaks them keeps the old.
        do {
            try PoolerTLS.check(settings)
        } catch {
            fail("TLS setup failed: \(error)")
        }

        if options.daemon {
            guard let pidfile = settings.pidfile, !pidfile.isEmpty else {
                fail("-d needs pidfile to be set in the configuration")
            }
            _ = pidfile
            daemonize()
        }

        let sink: LogSink
        do {
            sink = try LogSink(toStandardError: !options.quiet && !options.daemon, logfile: settings.logfile)
        } catch {
            fail("\(error)")
        }
        LogVerbosity.set(commandLine: options.verbosity)
        LogVerbosity.set(configured: settings.verbose)
        LoggingSystem.bootstrap { _ in PgBouncerLogHandler(sink: sink) }
        let logger = Logger(label: "lifeguard")
        for warning in configuration.warnings + authFileWarnings { logger.warning("\(warning)") }

        if let pidfile = settings.pidfile, !pidfile.isEmpty {
            writePidfile(pidfile)
        }
        // The signals, blocked in every thread since the start of run, reach the event loop through a
        // signalfd opened before the listeners: a signal sent as soon as the port answers is acted on.
        let server: LifeguardServer
        do {
            server = try LifeguardServer(
                configurationPath: config, configuration: configuration, authFiles: authFiles, logger: logger,
                reopenLog: { sink.reopen() })
            try server.start(signals: handledSignals)
        } catch {
            logger.critical("\(error)")
            fail("\(error)")
        }
        if let name = options.user ?? settings.user, getuid() == 0 {
            switchUser(name)
        }
        logger.info("process up: \(LifeguardVersion.line), pid \(getpid())")

        server.run()
        server.shutdown()
        if let pidfile = settings.pidfile, !pidfile.isEmpty { unlink(pidfile) }
        logger.info("shutdown complete")
    }

    /// `--check-config`: everything a start would read, without starting. Warnings go to stdout with the
    /// verdict; errors (the first of each file: its parser stops there) to stderr.
    private func checkConfiguration(_ path: String) -> Int32 {
        let configuration: Configuration
        do {
            configuration = try Configuration.load(path: path)
        } catch {
            FileHandleStandardError.write("error: \(error)\n")
            return 1
        }
        for warning in configuration.warnings { print("warning: \(warning)") }
        var errors: [String] = []
        do {
            _ = try AuthFiles.load(configuration.settings) { print("warning: \($0)") }
        } catch {
            errors.append("\(error)")
        }
        do {
            try PoolerTLS.check(configuration.settings)
        } catch {
            errors.append("TLS setup failed: \(error)")
        }
        for error in errors { FileHandleStandardError.write("error: \(error)\n") }
        guard errors.isEmpty else { return 1 }
        print("\(path): configuration is valid")
        return 0
    }

    private func fail(_ message: String) -> Never {
        FileHandleStandardError.write("lifeguard: \(message)\n")
        Glibc.exit(1)
    }

    /// Classic double-fork-free daemonizing: fork, let the parent exit, start a new session, detach stdio.
    private func daemonize() {
        let pid = fork()
        if pid < 0 { fail("fork failed: \(String(cString: strerror(errno)))") }
        if pid > 0 { Glibc.exit(0) }
        setsid()
        let devNull = open("/dev/null", O_RDWR)
        if devNull >= 0 {
            dup2(devNull, 0)
            dup2(devNull, 1)
            dup2(devNull, 2)
            if devNull > 2 { close(devNull) }
        }
        // Inherited descriptors (a parent's pipe, say) would otherwise stay open for the daemon's lifetime.
        let limit = min(max(Int32(sysconf(Int32(_SC_OPEN_MAX))), 3), 65536)
        for descriptor in 3..<limit {
            close(descriptor)
        }
    }

    private func writePidfile(_ path: String) {
        let text = "\(getpid())\n"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { fail("cannot write pidfile \(path): \(String(cString: strerror(errno)))") }
        _ = text.withCString { write(fd, $0, strlen($0)) }
        close(fd)
    }

    private func switchUser(_ name: String) {
        guard let entry = getpwnam(name) else { fail("unknown user: \(name)") }
        if setgid(entry.pointee.pw_gid) != 0 || setuid(entry.pointee.pw_uid) != 0 {
            fail("cannot switch to user \(name): \(String(cString: strerror(errno)))")
        }
    }
}

enum FileHandleStandardError {
    static func write(_ text: String) {
        _ = text.withCString { Glibc.write(2, $0, strlen($0)) }
    }
}

do {
    LifeguardCommand(options: try CommandLineOptions(arguments: Array(CommandLine.arguments.dropFirst()))).run()
} catch {
    FileHandleStandardError.write("lifeguard: \(error)\nTry 'lifeguard --help' for more information.\n")
    exit(64)  // EX_USAGE
}
