package node

import (
	"errors"
	"fmt"
	"net"
	"reflect"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"gopkg.in/yaml.v3"

	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/approval"
	"github.com/karuta-tracker/karuta/hooks/jwt"
	"github.com/karuta-tracker/karuta/hooks/passkey"
	"github.com/karuta-tracker/karuta/hooks/peerpref"
	"github.com/karuta-tracker/karuta/hooks/ratelimit"
	"github.com/karuta-tracker/karuta/hooks/varinterval"
)

// hookBuilders maps each optional hook's config name to a function that
// decodes and validates its options and returns a constructor. The set is
// fixed, so it is wired here explicitly rather than through init-time
// registration.
var hookBuilders = map[string]func(opts *yaml.Node) (hookConstructor, error){
	varinterval.Name: hookBuilder(varinterval.DefaultConfig, func(cfg varinterval.Config, _ hookEnv) (any, error) {
		return varinterval.New(cfg)
	}),
	approval.ClientName: hookBuilder(approval.DefaultClientConfig, func(cfg approval.ClientConfig, env hookEnv) (any, error) {
		return approval.NewClient(cfg, env.Log.Named(approval.ClientName))
	}),
	approval.TorrentName: hookBuilder(approval.DefaultTorrentConfig, func(cfg approval.TorrentConfig, env hookEnv) (any, error) {
		return approval.NewTorrent(cfg, env.Log.Named(approval.TorrentName))
	}),
	passkey.Name: hookBuilder(passkey.DefaultConfig, func(cfg passkey.Config, env hookEnv) (any, error) {
		return passkey.New(cfg, env.Log.Named(passkey.Name))
	}),
	ratelimit.Name: hookBuilder(ratelimit.DefaultConfig, func(cfg ratelimit.Config, env hookEnv) (any, error) {
		return ratelimit.New(cfg, env.Registerer)
	}),
	jwt.Name: hookBuilder(jwt.DefaultConfig, func(cfg jwt.Config, env hookEnv) (any, error) {
		return jwt.New(cfg, env.Log.Named("jwt"), env.Registerer)
	}),
	peerpref.Name: hookBuilder(peerpref.DefaultConfig, func(cfg peerpref.Config, _ hookEnv) (any, error) {
		return peerpref.New(cfg)
	}),
}

// hookBuilder is the one builder every hook uses: it decodes the options
// over defaults(), rejecting unknown keys, validates them, and returns a
// constructor that calls newHook with them.
func hookBuilder[C interface{ Validate() error }](defaults func() C, newHook func(C, hookEnv) (any, error)) func(*yaml.Node) (hookConstructor, error) {
	return func(opts *yaml.Node) (hookConstructor, error) {
		cfg := defaults()
		if err := decodeOptions(opts, &cfg); err != nil {
			return nil, err
		}
		return func(env hookEnv) (any, error) { return newHook(cfg, env) }, nil
	}
}

// hookEnv is what a hook may need from the node besides its options.
type hookEnv struct {
	// Log is named "hooks"; a hook names its own child logger.
	Log *zap.Logger
	// Registerer receives the hook's metrics.
	Registerer prometheus.Registerer
}

// hookConstructor builds a hook whose options have been checked.
type hookConstructor func(hookEnv) (any, error)

// parseHook checks a hook spec and returns its constructor. Errors start
// with the key relative to the spec (name or options.KEY).
func parseHook(spec hooks.Spec) (hookConstructor, error) {
	build, ok := hookBuilders[spec.Name]
	if !ok {
		names := make([]string, 0, len(hookBuilders))
		for n := range hookBuilders {
			names = append(names, n)
		}
		return nil, fmt.Errorf("name: %q is not a known hook; known hooks: %s", spec.Name, strings.Join(names, ", "))
	}
	return build(&spec.Options)
}

// decodeOptions decodes a hook's options over its defaults, rejecting
// unknown keys, then validates them.
func decodeOptions[C interface{ Validate() error }](opts *yaml.Node, cfg *C) error {
	if opts.Kind != 0 {
		if err := checkYAML(opts, reflect.TypeFor[C](), "options"); err != nil {
			return err
		}
		if err := opts.Decode(cfg); err != nil {
			return fmt.Errorf("options: %w", err)
		}
	}
	if err := (*cfg).Validate(); err != nil {
		return fmt.Errorf("options.%w", err)
	}
	return nil
}

// builtHooks are the configured hooks, sorted by the roles they play.
type builtHooks struct {
	pre       []hooks.PreHook
	post      []hooks.PostHook
	reloaders []hooks.Reloader
	closers   []hooks.Closer
	// rankers order the Responder's candidates, in config order.
	rankers []hooks.PeerRanker
}

// close stops every hook with background work.
func (b builtHooks) close() error {
	var errs []error
	for _, c := range b.closers {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// buildHooks constructs the configured hooks in order and sorts them into
// PreHooks and PostHooks (a hook may be both), remembering those that
// reload or need closing.
func buildHooks(specs []hooks.Spec, env hookEnv) (built builtHooks, err error) {
	defer func() {
		if err != nil {
			_ = built.close()
			built = builtHooks{} // closed: nothing left for the caller
		}
	}()
	for i, spec := range specs {
		build, err := parseHook(spec)
		if err != nil {
			return built, fmt.Errorf("hooks[%d].%w", i, err)
		}
		h, err := build(env)
		if err != nil {
			return built, fmt.Errorf("hooks[%d] (%s): %w", i, spec.Name, err)
		}
		if c, ok := h.(hooks.Closer); ok {
			built.closers = append(built.closers, c)
		}
		if p, ok := h.(hooks.PreHook); ok {
			built.pre = append(built.pre, p)
		}
		if q, ok := h.(hooks.PostHook); ok {
			built.post = append(built.post, q)
		}
		if r, ok := h.(hooks.Reloader); ok {
			built.reloaders = append(built.reloaders, r)
		}
		if k, ok := h.(hooks.PeerRanker); ok {
			built.rankers = append(built.rankers, k)
		}
	}
	return built, nil
}

// checkListenAddr accepts host:port with an empty or literal host, or a
// resolvable name, and a port from 0 to 65535.
func checkListenAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("is not host:port (such as :6880 or 127.0.0.1:6880)")
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("has port %q; want 0 to 65535", port)
	}
	return nil
}
