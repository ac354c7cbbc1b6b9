package node

import (
	"fmt"
	"net"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/karuta-tracker/karuta/hooks"
	"github.com/karuta-tracker/karuta/hooks/varinterval"
)

// hookBuilders maps each optional hook's config name to a function that
// decodes and validates its options and returns a constructor. The set is
// fixed, so it is wired here explicitly rather than through init-time
// registration.
var hookBuilders = map[string]func(opts *yaml.Node) (func() (any, error), error){
	varinterval.Name: func(opts *yaml.Node) (func() (any, error), error) {
		cfg := varinterval.DefaultConfig()
		if err := decodeOptions(opts, &cfg); err != nil {
			return nil, err
		}
		return func() (any, error) { return varinterval.New(cfg) }, nil
	},
}

// parseHook checks a hook spec and returns its constructor. Errors start
// with the key relative to the spec (name or options.KEY).
func parseHook(spec hooks.Spec) (func() (any, error), error) {
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

// buildHooks constructs the configured hooks in order and sorts them into
// PreHooks and PostHooks; a hook may be both.
func buildHooks(specs []hooks.Spec) (pre []hooks.PreHook, post []hooks.PostHook, err error) {
	for i, spec := range specs {
		build, err := parseHook(spec)
		if err != nil {
			return nil, nil, fmt.Errorf("hooks[%d].%w", i, err)
		}
		h, err := build()
		if err != nil {
			return nil, nil, fmt.Errorf("hooks[%d] (%s): %w", i, spec.Name, err)
		}
		p, isPre := h.(hooks.PreHook)
		q, isPost := h.(hooks.PostHook)
		if isPre {
			pre = append(pre, p)
		}
		if isPost {
			post = append(post, q)
		}
	}
	return pre, post, nil
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
