package http

// fdHeadroom is the file descriptors left for everything but tracker
// connections (UDP sockets, the cluster, the operations listener, files):
// if max_connections can take them, a flood of connections still starves
// the rest of the node, as the connection cap is meant to prevent.
const fdHeadroom = 1024

// fileLimitTight reports whether maxConns connections leave fewer than
// fdHeadroom of a process limit of limit file descriptors.
func fileLimitTight(maxConns int, limit uint64) bool {
	return uint64(maxConns)+fdHeadroom > limit //nolint:gosec // G115: Validate keeps max_connections between 1 and 10 000 000
}
