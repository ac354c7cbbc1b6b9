//go:build !linux

package webtorrent

import "errors"

// poller is Linux's; elsewhere every socket reads on a goroutine of its
// own (readLoop).
type poller struct{}

func newPoller(*Server) (*poller, error) { return nil, errors.New("no epoll on this platform") }

func (*poller) watch(*conn) bool  { return false }
func (*poller) rearm(*conn) error { return nil }
func (*poller) run()              {}
func (*poller) close()            {}
func (c *conn) waiting() bool     { return true }
