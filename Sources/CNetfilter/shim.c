// Intentionally empty: SwiftPM needs one source file to build and link the C target. All of the shim
// lives in include/CNetfilter.h as static inline wrappers.
#include "CNetfilter.h"
