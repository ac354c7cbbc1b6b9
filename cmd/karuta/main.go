// Command karuta runs a Karuta BitTorrent tracker node and the tools around
// it: config inspection, cluster status and version reporting.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/karuta-tracker/karuta/node"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

const usage = `Karuta is a BitTorrent tracker whose nodes form one cluster.

Usage:
  karuta [serve] [--config FILE]   run a node (embedded defaults without --config)
  karuta config defaults           print the default config, every key commented
  karuta config check FILE         validate a config file
  karuta cluster status [--addr HOST:PORT] [--json]
                                   show a node's view of its cluster
  karuta cluster keygen            print a new random key for cluster.secret_keys
  karuta cluster tls ca|cert ...   create the data channel's CA and node certificates
  karuta bench --url URL [flags]   load-test a UDP or HTTP tracker (see karuta bench -h)
  karuta bench visibility --url URL --url URL [flags]
                                   time a peer announced at one node to show at another
  karuta bench floor [--addr HOST:PORT]
                                   a UDP server that does no tracker work, on the UDP
                                   frontend's socket path: the floor to measure against
  karuta bench-ws --url URL [flags]  load-test a WebTorrent (WebSocket) tracker
  karuta version                   print the version (also --version)
  karuta help                      print this help (also -h, --help)

Each command takes -h for its own flags. Documentation: README.md and docs/
in the source tree.
`

func main() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, sigs))
}

// run executes one command line and returns the process exit code. Signals
// arrive on sigs, so tests can drive a node's lifecycle.
func run(args []string, stdout, stderr io.Writer, sigs <-chan os.Signal) int {
	cmd := "serve"
	if len(args) > 0 && (args[0] == "" || args[0][0] != '-') {
		cmd, args = args[0], args[1:]
	} else if len(args) > 0 {
		// Flags before any command: the help and version flags people
		// try first are commands of their own; anything else is serve's.
		switch args[0] {
		case "-h", "-help", "--help":
			cmd = "help"
		case "-version", "--version":
			cmd = "version"
		}
	}
	switch cmd {
	case "serve":
		return serve(args, stderr, sigs)
	case "config":
		return configCmd(args, stdout, stderr)
	case "cluster":
		return clusterCmd(args, stdout, stderr)
	case "bench":
		return benchCmd(args, stdout, stderr, sigs)
	case "bench-ws":
		return benchWSCmd(args, stdout, stderr, sigs)
	case "version":
		fmt.Fprintf(stdout, "karuta %s\n", version)
		return exitOK
	case "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	}
	fmt.Fprintf(stderr, "karuta: unknown command %q\n\n%s", cmd, usage)
	return exitUsage
}

// isHelp reports whether args ask for a command's help.
func isHelp(args []string) bool {
	return len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help" || args[0] == "help")
}

const configUsage = "usage: karuta config defaults | karuta config check FILE\n"

func configCmd(args []string, stdout, stderr io.Writer) int {
	switch {
	case isHelp(args):
		fmt.Fprint(stdout, configUsage)
		return exitOK
	case len(args) == 1 && args[0] == "defaults":
		_, _ = stdout.Write(node.DefaultsYAML())
		return exitOK
	case len(args) == 2 && args[0] == "check":
		if _, err := node.Load(args[1]); err != nil {
			fmt.Fprintf(stderr, "karuta: %v\n", err)
			return exitUsage
		}
		fmt.Fprintf(stdout, "%s: ok\n", args[1])
		return exitOK
	}
	fmt.Fprint(stderr, "karuta: "+configUsage)
	return exitUsage
}

func serve(args []string, stderr io.Writer, sigs <-chan os.Signal) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "config `file` (YAML); embedded defaults when empty")
	shutdownTimeout := fs.Duration("shutdown-timeout", 30*time.Second, "how long a graceful shutdown may take")
	if err := fs.Parse(args); err != nil {
		return parseExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "karuta: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	cfg := node.Default()
	if *configPath != "" {
		var err error
		if cfg, err = node.Load(*configPath); err != nil {
			fmt.Fprintf(stderr, "karuta: %v\n", err)
			return exitUsage
		}
	}
	log, level, err := node.NewLogger(cfg.Log)
	if err != nil {
		fmt.Fprintf(stderr, "karuta: %v\n", err)
		return exitUsage
	}
	defer log.Sync() //nolint:errcheck // nothing useful to do if stderr is gone

	n, err := node.New(cfg, node.Options{Log: log, Level: level, Version: version, Memory: fitMemory(log)})
	if err != nil {
		fmt.Fprintf(stderr, "karuta: %v\n", err)
		return exitUsage
	}
	if err := n.Start(); err != nil {
		log.Error("start failed", zap.Error(err))
		fmt.Fprintf(stderr, "karuta: %v\n", err)
		return exitFailure
	}
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			reload(n, *configPath, log)
			continue
		}
		log.Info("shutting down", zap.Stringer("signal", sig))
		ctx, cancel := context.WithTimeout(context.Background(), *shutdownTimeout)
		done := make(chan error, 1)
		go func() { done <- n.Shutdown(ctx) }()
		select {
		case err = <-done:
		case sig := <-sigs:
			log.Warn("second signal, exiting without finishing shutdown", zap.Stringer("signal", sig))
			err = errors.New("shutdown interrupted")
		}
		cancel()
		if err != nil {
			log.Error("shutdown incomplete", zap.Error(err))
			return exitFailure
		}
		return exitOK
	}
	return exitOK
}

// parseExit is the exit code for a flag parse error: 0 when the user
// asked for the help that the flag package has just printed.
func parseExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	return exitUsage
}

func reload(n *node.Node, path string, log *zap.Logger) {
	if path == "" {
		log.Info("SIGHUP: running on embedded defaults, nothing to reload")
		return
	}
	cfg, err := node.Load(path)
	if err != nil {
		log.Error("SIGHUP: config not reloaded", zap.Error(err))
		return
	}
	if err := n.Reload(cfg); err != nil {
		log.Error("SIGHUP: reload incomplete", zap.Error(err))
	}
}
