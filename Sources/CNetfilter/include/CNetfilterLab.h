// The Lab's part of the C shim: what Swift cannot import for network namespaces, AF_PACKET and ethtool.
// The functions are one-call wrappers (defined in lab_shim.c, which is compiled with _GNU_SOURCE; Swift's
// Glibc module is not, so setns, pipe2 and recvmmsg/sendmmsg are invisible to Swift otherwise). No logic.
#ifndef CNETFILTER_LAB_H
#define CNETFILTER_LAB_H

// Only uapi headers here: a libc header included by this module would make its declarations belong to
// it, and Swift files that import Glibc but not CNetfilter would lose sight of them.
#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ethtool.h>

/// glibc's POSIX_SPAWN_SETSID (spawn.h hides it without _GNU_SOURCE).
static const short CNF_POSIX_SPAWN_SETSID = 0x80;

struct pollfd;
struct timespec;

/// setns(fd, CLONE_NEWNET): joins the calling thread to the network namespace open at `fd`.
int cnf_setns_net(int fd);
/// pipe2(fds, O_CLOEXEC): no window in which a concurrently spawned child inherits the pipe.
int cnf_pipe_cloexec(int fds[2]);
/// ppoll(2) with no signal mask: poll with a nanosecond timeout (NULL: wait forever).
int cnf_ppoll(struct pollfd *fds, unsigned long count, const struct timespec *timeout);
/// recvmmsg(2). `vector` points to `count` struct mmsghdr {struct msghdr; unsigned int msg_len} (the
/// struct itself is hidden from Swift without _GNU_SOURCE; Swift lays out an equivalent).
int cnf_recvmmsg(int fd, void *vector, unsigned int count, int flags);
/// sendmmsg(2), same `vector` as cnf_recvmmsg.
int cnf_sendmmsg(int fd, void *vector, unsigned int count, int flags);
/// sizeof(struct mmsghdr), to check the Swift layout against.
unsigned long cnf_mmsghdr_size(void);
/// ioctl(fd, SIOCETHTOOL) with a struct ethtool_value {cmd, data} for interface `name` (a legacy ETHTOOL_S*
/// or ETHTOOL_G* command). Returns ioctl's result; for a G* command the value is stored in *data.
int cnf_ethtool_value(int fd, const char *name, __u32 cmd, __u32 *data);

#endif
