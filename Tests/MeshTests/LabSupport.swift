import Lab

/// A site of a root test: something running in its own namespace on its own executor.
protocol NamespacedSite: AnyObject {
    var namespace: NetworkNamespace { get }
    var executor: NamespaceExecutor { get }
    func stop() async
}

/// Stops every site, ends its executor, deletes its namespace (killing anything left in it), then the hub.
func tearDownLab(_ hub: NetworkNamespace, _ sites: [any NamespacedSite]) async {
    for site in sites {
        await site.stop()
        site.executor.shutdown()
        site.namespace.delete()
    }
    hub.delete()
}
