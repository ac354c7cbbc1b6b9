//go:build unix

package http

import "syscall"

// fileLimit returns the process's soft limit on open files. The Go runtime
// has already raised it to the hard limit at start.
func fileLimit() (uint64, bool) {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0, false
	}
	return uint64(r.Cur), true // Cur is int64 on some platforms
}
