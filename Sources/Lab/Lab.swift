// The Lab layer: network-namespace topologies and the WAN emulator, used by `patronus-router lab`, the
// integration tests of every layer and bench/. See docs/LAB.md.
//
// Building blocks, smallest first:
//   Subprocess        run/spawn argv (posix_spawn), output captured without deadlock.
//   LabCleanup        process-wide registry: undo everything on teardown, exit, SIGINT and SIGTERM.
//   NetworkNamespace  a named netns: run commands in it, open sockets in it, veths, addresses, routes.
//   LabTopology       sites, LAN hosts and ISPs wired together (an addressing plan; see docs/LAB.md).
//   WANEmulator       userspace delay/jitter/loss/rate/cut between a site and its ISP (no netem here).
