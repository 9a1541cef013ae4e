// CNetfilter: the one C shim. libnftnl, libmnl and the linux uapi headers, plus static inline wrappers
// for what Swift cannot import (macros). No logic lives here.
#ifndef CNETFILTER_H
#define CNETFILTER_H
#include "CNetfilterLab.h"
#endif
