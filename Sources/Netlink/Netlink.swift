// The Netlink layer: see README.md "Code layout".
