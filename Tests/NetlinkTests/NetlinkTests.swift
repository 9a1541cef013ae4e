// Tests of the Netlink layer.
