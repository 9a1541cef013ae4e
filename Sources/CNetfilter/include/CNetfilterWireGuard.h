// The WireGuard layer's part of the C shim: the WireGuard generic netlink family (names, commands,
// attributes, flags). The netlink, genetlink and rtnetlink headers come with CNetfilter.h. Declarations only.
#ifndef CNETFILTER_WIREGUARD_H
#define CNETFILTER_WIREGUARD_H
#include <linux/wireguard.h>
#endif
