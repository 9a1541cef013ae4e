// One-call wrappers for the Lab (see include/CNetfilterLab.h). Compiled with _GNU_SOURCE.
#define _GNU_SOURCE
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/sockios.h>
#include "CNetfilterLab.h"

_Static_assert(sizeof(struct cnf_mmsghdr) == sizeof(struct mmsghdr), "cnf_mmsghdr layout");

int cnf_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }

int cnf_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int cnf_recvmmsg(int fd, struct cnf_mmsghdr *vector, unsigned int count, int flags, struct timespec *timeout) {
    return recvmmsg(fd, (struct mmsghdr *)vector, count, flags, timeout);
}

int cnf_sendmmsg(int fd, struct cnf_mmsghdr *vector, unsigned int count, int flags) {
    return sendmmsg(fd, (struct mmsghdr *)vector, count, flags);
}

int cnf_ethtool_value(int fd, const char *name, uint32_t cmd, uint32_t *data) {
    struct ethtool_value value = { .cmd = cmd, .data = *data };
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    request.ifr_data = (char *)&value;
    int rc = ioctl(fd, SIOCETHTOOL, &request);
    *data = value.data;
    return rc;
}
