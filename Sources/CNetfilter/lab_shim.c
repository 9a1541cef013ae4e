// One-call wrappers for the Lab (see include/CNetfilterLab.h). Compiled with _GNU_SOURCE.
#define _GNU_SOURCE
#include <fcntl.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/sockios.h>
#include "CNetfilterLab.h"


int cnf_setns_net(int fd) { return setns(fd, CLONE_NEWNET); }

int cnf_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

int cnf_ppoll(struct pollfd *fds, unsigned long count, const struct timespec *timeout) {
    return ppoll(fds, count, timeout, NULL);
}

int cnf_recvmmsg(int fd, void *vector, unsigned int count, int flags) {
    return recvmmsg(fd, (struct mmsghdr *)vector, count, flags, NULL);
}

int cnf_sendmmsg(int fd, void *vector, unsigned int count, int flags) {
    return sendmmsg(fd, (struct mmsghdr *)vector, count, flags);
}

unsigned long cnf_mmsghdr_size(void) { return sizeof(struct mmsghdr); }

int cnf_ethtool_value(int fd, const char *name, __u32 cmd, __u32 *data) {
    struct ethtool_value value = { .cmd = cmd, .data = *data };
    struct ifreq request;
    memset(&request, 0, sizeof request);
    strncpy(request.ifr_name, name, IFNAMSIZ - 1);
    request.ifr_data = (char *)&value;
    int rc = ioctl(fd, SIOCETHTOOL, &request);
    *data = value.data;
    return rc;
}
