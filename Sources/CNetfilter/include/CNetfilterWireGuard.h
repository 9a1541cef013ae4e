// Kernel headers the WireGuard layer builds netlink messages from: generic netlink (controller), the
// WireGuard genetlink family, and rtnetlink links/addresses. Declarations only.
#ifndef CNETFILTER_WIREGUARD_H
#define CNETFILTER_WIREGUARD_H
#include <linux/netlink.h>
#include <linux/genetlink.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>
#include <linux/if_addr.h>
#include <linux/wireguard.h>
#endif
