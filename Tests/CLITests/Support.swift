import Foundation

func withTemporaryDirectory<T>(_ body: (String) throws -> T) throws -> T {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("pt-cli-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: path) }
    return try body(path)
}

func fileBytes(_ path: String) -> Data? { FileManager.default.contents(atPath: path) }

/// The executable that `swift build` / `swift test` built beside the tests.
enum Binary {
    static let path: String = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        for configuration in ["debug", "release"] {
            let candidate = root.appendingPathComponent(".build/\(configuration)/patronus-router").path
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return ""
    }()
    static var exists: Bool { !path.isEmpty }
}

struct ProgramResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var stderrLines: [Substring] { stderr.split(separator: "\n") }
}

/// Starts a program; `wait` collects it.
final class RunningProgram: @unchecked Sendable {
    let process = Process()
    private let out = Pipe(), err = Pipe()

    init(_ executable: String, _ arguments: [String], directory: String? = nil) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let directory { process.currentDirectoryURL = URL(fileURLWithPath: directory) }
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
    }

    func wait(timeout: TimeInterval = 20) -> ProgramResult {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning, Date() < deadline { usleep(20_000) }
        if process.isRunning { process.terminate() }
        let stdout = out.fileHandleForReading.readDataToEndOfFile()
        let stderr = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return ProgramResult(status: process.terminationStatus, stdout: String(decoding: stdout, as: UTF8.self),
                             stderr: String(decoding: stderr, as: UTF8.self))
    }

    func signal(_ number: Int32) { kill(process.processIdentifier, number) }
}

func run(_ arguments: [String], directory: String? = nil, executable: String = Binary.path) throws -> ProgramResult {
    try RunningProgram(executable, arguments, directory: directory).wait()
}
