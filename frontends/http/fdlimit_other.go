//go:build !unix

package http

// fileLimit reports no limit where there is no RLIMIT_NOFILE.
func fileLimit() (uint64, bool) { return 0, false }
