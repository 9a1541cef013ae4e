// CNetfilter: the one C shim. libnftnl, libmnl and the linux uapi headers, plus static inline wrappers
// for what Swift cannot import (macros). No logic lives here.
#ifndef CNETFILTER_H
#define CNETFILTER_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <errno.h>
// glibc first: linux/libc-compat.h then skips its duplicate in_addr/sockaddr_in definitions.
#include <netinet/in.h>
#include <net/if.h>

#include <linux/netlink.h>
#include <linux/genetlink.h>
#include <linux/rtnetlink.h>
#include <linux/fib_rules.h>
#include <linux/if_link.h>
#include <linux/if_addr.h>
#include <linux/pkt_sched.h>
#include <linux/gen_stats.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>

#include <libmnl/libmnl.h>
#include <libnftnl/common.h>
#include <libnftnl/batch.h>
#include <libnftnl/table.h>
#include <libnftnl/chain.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/expr.h>
#include <libnftnl/object.h>
#include <libnftnl/udata.h>
#include <libnftnl/gen.h>

// MNL_SOCKET_BUFFER_SIZE is a macro (depends on the page size); Swift cannot import it.
static inline size_t cnf_mnl_socket_buffer_size(void) { return MNL_SOCKET_BUFFER_SIZE; }

// The nftnl_*_nlmsg_build_hdr functions are macros over nftnl_nlmsg_build_hdr.
static inline struct nlmsghdr *cnf_nftnl_table_nlmsg_build_hdr(char *buf, uint16_t cmd, uint16_t family,
                                                                uint16_t flags, uint32_t seq) {
    return nftnl_table_nlmsg_build_hdr(buf, cmd, family, flags, seq);
}
static inline struct nlmsghdr *cnf_nftnl_chain_nlmsg_build_hdr(char *buf, uint16_t cmd, uint16_t family,
                                                                uint16_t flags, uint32_t seq) {
    return nftnl_chain_nlmsg_build_hdr(buf, cmd, family, flags, seq);
}
static inline struct nlmsghdr *cnf_nftnl_rule_nlmsg_build_hdr(char *buf, uint16_t cmd, uint16_t family,
                                                               uint16_t flags, uint32_t seq) {
    return nftnl_rule_nlmsg_build_hdr(buf, cmd, family, flags, seq);
}
static inline struct nlmsghdr *cnf_nftnl_set_nlmsg_build_hdr(char *buf, uint16_t cmd, uint16_t family,
                                                              uint16_t flags, uint32_t seq) {
    return nftnl_set_nlmsg_build_hdr(buf, cmd, family, flags, seq);
}

// NLMSG_* and NLA_* alignment helpers are macros.
static inline uint32_t cnf_nlmsg_align(uint32_t len) { return NLMSG_ALIGN(len); }
static inline uint32_t cnf_nla_align(uint32_t len) { return NLA_ALIGN(len); }

// The Lab's wrappers (setns, pipe2, recvmmsg, ethtool); cnf_setns_net is shared by Netlink and Lab.
#include "CNetfilterLab.h"

#include "CNetfilterWireGuard.h"
#endif
