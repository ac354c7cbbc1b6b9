//go:build unix

package webtorrent

import "syscall"

// raiseFileLimit lifts the process's open-file limit to at least n when it
// can: the soft limit up to the hard one, and the hard one too when the
// process may (root). It returns the limit in force afterwards. Every
// socket is a descriptor, and the Go runtime only raises the soft limit to
// the hard one, which is often far below max_connections.
func raiseFileLimit(n uint64) uint64 {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) != nil {
		return 0
	}
	if l.Cur >= n {
		return l.Cur
	}
	want := l
	want.Cur = n
	want.Max = max(l.Max, n)
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) != nil {
		want.Cur, want.Max = min(n, l.Max), l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want)
	}
	_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l)
	return l.Cur
}
