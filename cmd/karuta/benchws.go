package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/karuta-tracker/karuta/cmd/karuta/internal/wsload"
)

// benchWSCmd runs `karuta bench-ws`: WebTorrent load against a tracker's
// WebSocket frontend. Idle mode holds many peers open and reports the
// tracker's memory per peer; relay mode has leechers announce offers that
// seeders answer, and reports messages relayed per second of tracker CPU.
func benchWSCmd(args []string, stdout, stderr io.Writer, sigs <-chan os.Signal) int {
	cfg := wsload.Default()
	fs := flag.NewFlagSet("bench-ws", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var((*urlList)(&cfg.URLs), "url", "tracker WebSocket `URL` (ws://127.0.0.1:8000/announce); repeat it to spread the sockets over nodes")
	fs.StringVar(&cfg.Mode, "mode", cfg.Mode, "idle (hold peers, measure memory) or relay (offers and answers, measure CPU)")
	fs.IntVar(&cfg.Sockets, "sockets", cfg.Sockets, "WebSocket peers to open; in relay mode half seed and half leech")
	fs.IntVar(&cfg.Sources, "sources", cfg.Sources, "source addresses 127.0.10.1 and up to spread the sockets over")
	fs.IntVar(&cfg.Swarms, "swarms", cfg.Swarms, "swarms the peers are spread over")
	fs.IntVar(&cfg.Offers, "offers", cfg.Offers, "offers per announce (relay)")
	fs.IntVar(&cfg.SDPBytes, "sdp-bytes", cfg.SDPBytes, "size of each offer's and answer's SDP")
	fs.BoolVar(&cfg.Split, "split", cfg.Split, "relay: leechers on the first --url, seeders on the second, so every signal crosses nodes")
	fs.IntVar(&cfg.Dialers, "dialers", cfg.Dialers, "sockets opened at once")
	fs.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "relay: traffic before the measurement")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "relay: how long to measure")
	fs.DurationVar(&cfg.Settle, "settle", cfg.Settle, "idle: wait after the last socket opened before reading memory")
	fs.Var((*pidList)(&cfg.PIDs), "pid", "tracker `pid` on this host to measure (CPU, RSS); repeat it or list with commas")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(stderr, "karuta: bench-ws: %v\n", err)
		return exitUsage
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-sigs:
			cancel()
		case <-ctx.Done():
		}
	}()
	res, err := wsload.Run(ctx, cfg, stderr)
	if res == nil {
		fmt.Fprintf(stderr, "karuta: bench-ws: %v\n", err)
		return exitFailure
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	} else {
		fmt.Fprintf(stdout, "mode %s: %d of %d sockets open (%d failed, %d closed by the tracker)\n", res.Mode, res.Open, res.Sockets, res.Failed, res.Closed)
		if len(res.Refused) > 0 {
			fmt.Fprintf(stdout, "INVALID: the tracker refused requests: %v\n", res.Refused)
		}
		if res.Mode == wsload.ModeIdle {
			fmt.Fprintf(stdout, "tracker RSS %.1f MiB -> %.1f MiB: %.0f bytes per peer\n", float64(res.RSSBefore)/(1<<20), float64(res.RSSAfter)/(1<<20), res.BytesPerPeer)
		} else {
			fmt.Fprintf(stdout, "%.1fs: %d announces, %d offers and %d answers delivered: %.0f relayed/s\n", res.Seconds, res.Announces, res.OffersIn, res.AnswersIn, res.PerSecond)
			fmt.Fprintf(stdout, "tracker CPU %.2fs (%.2f cores): %.0f relayed messages per CPU-second\n", res.TrackerCPU, res.TrackerCPU/res.Seconds, res.PerCoreSecond)
			fmt.Fprintf(stdout, "offer round trip (announce sent to answer received): p50 %s, p99 %s\n", res.RoundTripP50, res.RoundTripP99)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "karuta: bench-ws: %v\n", err)
		return exitFailure
	}
	return exitOK
}
