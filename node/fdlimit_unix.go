//go:build unix

package node

import "syscall"

// fileLimit returns the process's soft limit on open files, which the Go
// runtime has raised to the hard limit at start.
func fileLimit() uint64 {
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		return 0
	}
	return uint64(r.Cur) // Cur is int64 on some platforms
}
