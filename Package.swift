// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "Lifeguard",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "lifeguard", targets: ["LifeguardCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
    ],
    targets: [
        // Protocol framing and the few messages the pooler inspects. NIOCore only.
        // A seeded generator shared by the wire tests and the fuzz targets (not linked into lifeguard).
        .target(name: "SplitMix"),
        .target(
            name: "PostgresWire",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")]
        ),
        // Pure logic: configuration, authentication, pooling rules. No sockets, clocks or logging.
        .target(
            name: "LifeguardCore",
            dependencies: [
                "PostgresWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
            ]
        ),
        // The event loop: epoll, non-blocking sockets with write queues, listeners, timers, signals.
        .target(
            name: "LifeguardEngine",
            dependencies: [
                "CLinuxShims",
                "COpenSSL",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        // The pooler on the engine: client and server sessions, pools, the console, logging.
        .target(
            name: "Lifeguard",
            dependencies: [
                "LifeguardCore",
                "LifeguardEngine",
                "PostgresWire",
                "CLinuxShims",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            // The sessions of one loop call each other directly; Swift 6's isolation checking cannot see that
            // they share the loop's thread, so this target stays in the Swift 5 language mode.
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        .executableTarget(
            name: "LifeguardCLI",
            dependencies: [
                "Lifeguard",
                "LifeguardCore",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/lifeguard"
        ),
        // A test socket that drives connections on an engine loop (engine and session tests; not linked into lifeguard).
        .target(
            name: "EngineTestSupport",
            dependencies: ["LifeguardEngine", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: [.swiftLanguageMode(.v5)]
        ),
        // glibc declarations Swift's Glibc module lacks: malloc_usable_size (SHOW MEM) and struct ucred.
        .systemLibrary(name: "CLinuxShims"),
        // The system OpenSSL (libssl-dev), for TLS on both sides.
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        // libpq, for integration tests that drive Lifeguard with the real PostgreSQL client library.
        .systemLibrary(
            name: "CLibPQ",
            pkgConfig: "libpq",
            providers: [.apt(["libpq-dev"])]
        ),
        .testTarget(
            name: "PostgresWireTests",
            dependencies: ["PostgresWire", "SplitMix", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "LifeguardCoreTests",
            dependencies: ["LifeguardCore", "PostgresWire"]
        ),
        .testTarget(
            name: "LifeguardEngineTests",
            dependencies: ["LifeguardEngine", "EngineTestSupport", .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(
            name: "LifeguardTests",
            dependencies: [
                "Lifeguard", "LifeguardCore", "LifeguardEngine", "EngineTestSupport", "PostgresWire",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
        .testTarget(
            name: "IntegrationTests",
            dependencies: [
                "CLibPQ", "LifeguardCore",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ]
        ),
    ]
)

// libFuzzer harness for the parsers (scripts/fuzz.sh). Declared only when LIFEGUARD_FUZZ is set: it links
// only with `-sanitize=fuzzer`, so the normal build must not see it.
if Context.environment["LIFEGUARD_FUZZ"] != nil {
    package.targets += [
        .executableTarget(
            name: "LifeguardFuzz",
            dependencies: [
                "LifeguardFuzzDriver", "PostgresWire", "LifeguardCore", "SplitMix",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Sources/LifeguardFuzz/Targets"
        ),
        // C glue that starts libFuzzer from SwiftPM's renamed entry point (see driver.c).
        .target(name: "LifeguardFuzzDriver", path: "Sources/LifeguardFuzz/Driver"),
    ]
    package.products.append(.executable(name: "lifeguard-fuzz", targets: ["LifeguardFuzz"]))
}
