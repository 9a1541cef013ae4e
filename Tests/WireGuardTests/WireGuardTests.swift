// Tests of the WireGuard layer.
