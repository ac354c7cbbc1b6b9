package main

import (
	"os"
	"runtime/debug"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/node/memlimit"
)

// fitMemory finds the memory this process may use and, in a memory cgroup
// without GOMEMLIMIT, sets the Go runtime's memory limit a little below the
// cgroup's, so the collector works harder before the kernel kills the
// process. It returns the limit found, for the node to size its store by.
func fitMemory(log *zap.Logger) memlimit.Limit {
	lim, err := memlimit.Detect(memlimit.ThisProcess())
	if err != nil {
		log.Warn("cannot tell how much memory this process may use; sizing by the defaults' fallback", zap.Error(err))
		return memlimit.Limit{}
	}
	if lim.Cgroup > 0 && os.Getenv("GOMEMLIMIT") == "" {
		soft := memlimit.RuntimeLimit(lim.Cgroup)
		debug.SetMemoryLimit(soft)
		log.Info("Go memory limit set below the cgroup's", zap.Int64("cgroup_bytes", lim.Cgroup), zap.Int64("go_memory_limit_bytes", soft))
	}
	return lim
}
