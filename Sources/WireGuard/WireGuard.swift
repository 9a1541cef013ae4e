// The WireGuard layer: see README.md "Code layout".
