// The Lab's part of the C shim: what Swift cannot import for network namespaces, AF_PACKET and ethtool.
// The functions are one-call wrappers (defined in lab_shim.c, which is compiled with _GNU_SOURCE; Swift's
// Glibc module is not, so setns, pipe2 and recvmmsg/sendmmsg are invisible to Swift otherwise). No logic.
#ifndef CNETFILTER_LAB_H
#define CNETFILTER_LAB_H

#include <stdint.h>
#include <sys/socket.h>
#include <time.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ethtool.h>

/// glibc's POSIX_SPAWN_SETSID (spawn.h hides it without _GNU_SOURCE).
static const short CNF_POSIX_SPAWN_SETSID = 0x80;

/// Layout-identical to glibc's struct mmsghdr (hidden without _GNU_SOURCE).
struct cnf_mmsghdr {
    struct msghdr msg_hdr;
    unsigned int msg_len;
};

/// setns(fd, CLONE_NEWNET): joins the calling thread to the network namespace open at `fd`.
int cnf_setns_net(int fd);
/// pipe2(fds, O_CLOEXEC): no window in which a concurrently spawned child inherits the pipe.
int cnf_pipe_cloexec(int fds[2]);
/// recvmmsg(2).
int cnf_recvmmsg(int fd, struct cnf_mmsghdr *vector, unsigned int count, int flags, struct timespec *timeout);
/// sendmmsg(2).
int cnf_sendmmsg(int fd, struct cnf_mmsghdr *vector, unsigned int count, int flags);
/// ioctl(fd, SIOCETHTOOL) with a struct ethtool_value {cmd, data} for interface `name` (a legacy ETHTOOL_S*
/// or ETHTOOL_G* command). Returns ioctl's result; for a G* command the value is stored in *data.
int cnf_ethtool_value(int fd, const char *name, uint32_t cmd, uint32_t *data);

#endif
