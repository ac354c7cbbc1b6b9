package http

import "fmt"

// fdHeadroom is the file descriptors left for everything but tracker
// connections (UDP sockets, the cluster, the operations listener, files):
// if max_connections can take them, a flood of connections still starves
// the rest of the node, as the connection cap is meant to prevent.
const fdHeadroom = 1024

// fileLimitProblem explains, or returns "" when there is none, why
// maxConns connections do not fit under a process limit of limit file
// descriptors with fdHeadroom to spare.
func fileLimitProblem(maxConns int, limit uint64) string {
	if uint64(maxConns)+fdHeadroom <= limit {
		return ""
	}
	return fmt.Sprintf("frontends.http.max_connections (%d) leaves fewer than %d of the process's %d file descriptors for the rest of the node; lower it or raise the limit (ulimit -n, LimitNOFILE)",
		maxConns, fdHeadroom, limit)
}
