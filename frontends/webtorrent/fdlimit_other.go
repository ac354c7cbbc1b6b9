//go:build !unix

package webtorrent

// raiseFileLimit cannot tell the limit on this platform.
func raiseFileLimit(n uint64) uint64 { return n }
