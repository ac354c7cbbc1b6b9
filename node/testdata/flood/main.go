// Command flood holds silent TCP connections open against a node, as the
// floods of issue 17 do: each flood keeps N connections from one source
// address to one target, opening each again a pause after the node
// closes it. The real-process tests run it beside the nodes, so the load
// comes from outside the processes measured (and outside the race
// detector). Every 200ms, and once more on SIGTERM or SIGINT, it prints
// one line with a field per flood, OPENED:CLOSED: how many connections it
// has opened, and how many of those the node has closed.
//
//	flood -f SOURCE,TARGET,N,PAUSE [-f ...]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type floods []string

func (f *floods) String() string     { return strings.Join(*f, " ") }
func (f *floods) Set(s string) error { *f = append(*f, s); return nil }

func main() {
	var specs floods
	flag.Var(&specs, "f", "SOURCE,TARGET,N,PAUSE: N silent connections from SOURCE to TARGET, each opened again PAUSE after it is closed")
	flag.Parse()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	counts := make([]*counts, len(specs))
	for i, spec := range specs {
		parts := strings.Split(spec, ",")
		if len(parts) != 4 {
			fmt.Fprintf(os.Stderr, "flood: -f %q: want SOURCE,TARGET,N,PAUSE\n", spec)
			os.Exit(2)
		}
		n, err := strconv.Atoi(parts[2])
		if err != nil {
			fmt.Fprintf(os.Stderr, "flood: -f %q: N: %v\n", spec, err)
			os.Exit(2)
		}
		pause, err := time.ParseDuration(parts[3])
		if err != nil {
			fmt.Fprintf(os.Stderr, "flood: -f %q: PAUSE: %v\n", spec, err)
			os.Exit(2)
		}
		counts[i] = run(ctx, &wg, parts[0], parts[1], n, pause)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(200 * time.Millisecond)
	report := func() {
		out := make([]string, len(counts))
		for i, c := range counts {
			out[i] = fmt.Sprintf("%d:%d", c.opened.Load(), c.closed.Load())
		}
		fmt.Println(strings.Join(out, " "))
	}
	for {
		select {
		case <-tick.C:
			report()
		case <-sig:
			cancel()
			wg.Wait()
			report()
			return
		}
	}
}

type counts struct{ opened, closed atomic.Int64 }

// run keeps n connections from source to target and counts those opened
// and those the target closed.
func run(ctx context.Context, wg *sync.WaitGroup, source, target string, n int, pause time.Duration) *counts {
	var c counts
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: time.Second}
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var b [1]byte
			for {
				nc, err := d.DialContext(ctx, "tcp", target)
				if err == nil {
					c.opened.Add(1)
					unhook := context.AfterFunc(ctx, func() { nc.Close() })
					_ = nc.SetReadDeadline(time.Now().Add(30 * time.Second))
					_, err = nc.Read(b[:])
					unhook()
					nc.Close()
					var ne net.Error
					if ctx.Err() == nil && (!errors.As(err, &ne) || !ne.Timeout()) {
						c.closed.Add(1)
					}
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(pause):
				}
			}
		}()
	}
	return &c
}
