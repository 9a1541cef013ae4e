// swift-tools-version:6.0
// patronus-router: an SD-WAN site router for Linux.
// Layers (data flows one way, observe -> decide -> apply); see README.md "Code layout".
import PackageDescription

let package = Package(
    name: "patronus-router",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "patronus-router", targets: ["patronus-router"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // C shim: libnftnl, libmnl and linux uapi headers; static inline wrappers for macros. No logic.
        .target(
            name: "CNetfilter",
            linkerSettings: [.linkedLibrary("nftnl"), .linkedLibrary("mnl")]
        ),
        // The version (VERSION) and the git commit, stamped on every build by the VersionStamp plugin.
        .target(name: "BuildInfo", plugins: ["VersionStamp"]),
        .plugin(name: "VersionStamp", capability: .buildTool()),
        // Value types shared by every layer: identities, prefixes, policies, path states. No I/O.
        .target(name: "Model"),
        // Netlink sockets and batches: rtnetlink (links, addresses, routes, rules), nftables objects.
        .target(name: "Netlink", dependencies: ["CNetfilter"]),
        // SteeringPlan -> kernel: compile, diff, apply atomically, reconcile, remove.
        .target(name: "Steering", dependencies: ["Model", "Netlink", .product(name: "Logging", package: "swift-log")]),
        // Pure decisions: policies + path states -> SteeringPlan. No I/O.
        .target(name: "Routing", dependencies: ["Model"]),
        // SQLite schema, migrations and queries. The only module that speaks SQL.
        .target(name: "Store", dependencies: ["Model", .product(name: "GRDB", package: "GRDB.swift")]),
        // WireGuard: one protocol, kernel and userspace (wireguard-go + UAPI) backends.
        .target(name: "WireGuard", dependencies: [
            "Model", "Netlink", "CNetfilter", .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Announcements, authentication, discovery, peers, paths and tunnels.
        .target(name: "Mesh", dependencies: [
            "Model", "WireGuard", "CNetfilter", .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Probe wire format, responder, per-path prober, estimators, score.
        .target(name: "Probing", dependencies: ["Model", .product(name: "Logging", package: "swift-log")]),
        // The daemon: services under one ServiceGroup, failover loop, status report.
        .target(name: "Router", dependencies: [
            "CNetfilter", "Model", "Steering", "Routing", "Store", "WireGuard", "Mesh", "Probing",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
        // Network-namespace topologies and the WAN emulator (used by `lab`, tests and bench).
        .target(name: "Lab", dependencies: ["Model", "CNetfilter", .product(name: "Logging", package: "swift-log")]),
        // The command line: every subcommand, testable without the executable.
        .target(name: "CLI", dependencies: [
            "BuildInfo", "Model", "Store", "Router", "Lab", "WireGuard", "Mesh",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "patronus-router", dependencies: ["CLI"]),
        // Steering benchmarks (re-steer latency vs the nft CLI, churn for crash tests); driven by bench/*.sh.
        .executableTarget(name: "patronus-bench", dependencies: ["Steering", "Netlink", "Model", "Lab"]),

        .testTarget(name: "ModelTests", dependencies: ["Model"]),
        .testTarget(name: "NetlinkTests", dependencies: ["Netlink", "CNetfilter"]),
        .testTarget(name: "SteeringTests", dependencies: ["Steering", "Netlink", "Model", "Lab"]),
        .testTarget(name: "RoutingTests", dependencies: ["Routing", "Model"]),
        .testTarget(name: "StoreTests", dependencies: ["Store", "Model", .product(name: "GRDB", package: "GRDB.swift")]),
        .testTarget(name: "WireGuardTests", dependencies: ["WireGuard", "Model", "CNetfilter", "Netlink", "Lab"]),
        .testTarget(name: "MeshTests", dependencies: [
            "Mesh", "Model", "WireGuard", "Lab", .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "ProbingTests", dependencies: [
            "Probing", "Model", "Lab", "WireGuard", .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "LabTests", dependencies: ["Lab", "Model"]),
        .testTarget(name: "CLITests", dependencies: ["CLI", "Store", "Model", "Lab", "Router", "WireGuard", "Mesh"]),
        .testTarget(name: "RouterTests", dependencies: [
            "Router", "Model", "Routing", "Lab", "Mesh", "Netlink", "Store", "WireGuard", .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Issue 7's lab acceptance: real applications through real routers, verified by ISP-side counters.
        .testTarget(name: "AcceptanceTests", dependencies: ["Lab"]),
    ]
)
