import ArgumentParser
import Foundation
import Router
import Store

/// `patronus-router status`: the status report from the database, read-only, safe beside the daemon, with
/// the steering the kernel does now (which path each class takes to each site, and why).
struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Print the network status report from the database.",
        discussion: "Reads the database without writing to it, so it works while the daemon runs. "
            + "The steering lines are read from the kernel (table inet patronus, route lookups) of the current "
            + "namespace or --netns's, not from the daemon's memory. "
            + "--json prints the schema documented in docs/STATUS-JSON.md.")

    @OptionGroup var options: KernelInspectionOptions

    @Flag(help: "Print JSON (a stable, versioned schema) instead of the report.")
    var json = false

    func run() throws {
        let store = try Store.openReadOnly(path: options.database)
        var snapshot = try store.statusSnapshot()
        do {
            let steering = try SteeringInspector(store: store, netns: options.netns).currentSteering()
            snapshot.steering = steering
            snapshot.steeringDisagreements = steering.count { $0.disagreement != nil }
        } catch .store(let error) {
            throw error
        } catch {
            snapshot.steeringError = "\(error)"
        }
        snapshot.transit = try? SteeringInspector(store: store, netns: options.netns).transit()
        do {
            snapshot.shaping = try SteeringInspector(store: store, netns: options.netns).shapers(paths: snapshot.paths)
        } catch {
            snapshot.shapingError = "\(error)"
        }
        FileHandle.standardOutput.write(Data((json ? snapshot.json() : snapshot.report()).utf8))
    }
}
