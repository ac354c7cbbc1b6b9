package node

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

var (
	yamlNodeType = reflect.TypeFor[yaml.Node]()
	durationType = reflect.TypeFor[time.Duration]()
)

// checkYAML walks a parsed document alongside the Go type it will be
// decoded into and reports the first unknown key or ill-typed value with its
// full dotted path. yaml.v3's own errors name only a line and a Go type,
// which is not enough for an operator editing a large file.
func checkYAML(n *yaml.Node, t reflect.Type, path string) error {
	if n.Kind == 0 {
		return nil // empty document
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		return checkYAML(n.Content[0], t, path)
	}
	if n.Kind == yaml.AliasNode {
		return fmt.Errorf("%s: line %d: aliases are not supported in the config", pathOrRoot(path), n.Line)
	}
	if t == yamlNodeType {
		return nil // free-form options, checked by their owner
	}
	if n.Tag == "!!null" {
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if t == durationType {
			break
		}
		if n.Kind != yaml.MappingNode {
			return fmt.Errorf("%s: line %d: want a mapping of keys, got %s", pathOrRoot(path), n.Line, describe(n))
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			f, ok := fields[k.Value]
			if !ok {
				return fmt.Errorf("%s: line %d: unknown key; known keys here: %s", join(path, k.Value), k.Line, strings.Join(knownKeys(t), ", "))
			}
			if err := checkYAML(v, f.Type, join(path, k.Value)); err != nil {
				return err
			}
		}
		return nil
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return fmt.Errorf("%s: line %d: want a list, got %s", pathOrRoot(path), n.Line, describe(n))
		}
		for i, item := range n.Content {
			if err := checkYAML(item, t.Elem(), fmt.Sprintf("%s[%d]", path, i)); err != nil {
				return err
			}
		}
		return nil
	case reflect.Map:
		return nil
	}
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("%s: line %d: want %s, got %s", pathOrRoot(path), n.Line, typeName(t), describe(n))
	}
	if err := n.Decode(reflect.New(t).Interface()); err != nil {
		return fmt.Errorf("%s: line %d: %q is not %s", path, n.Line, n.Value, typeName(t))
	}
	return nil
}

// yamlFields maps the yaml key names of struct type t to their fields,
// flattening `,inline` embedded structs as yaml.v3 does.
func yamlFields(t reflect.Type) map[string]reflect.StructField {
	m := make(map[string]reflect.StructField, t.NumField())
	for _, f := range fieldsInOrder(t) {
		m[f.name] = f.field
	}
	return m
}

// knownKeys lists t's yaml keys in declaration order, for error messages.
func knownKeys(t reflect.Type) []string {
	var keys []string
	for _, f := range fieldsInOrder(t) {
		keys = append(keys, f.name)
	}
	return keys
}

type namedField struct {
	name  string
	field reflect.StructField
}

func fieldsInOrder(t reflect.Type) []namedField {
	var out []namedField
	for i := range t.NumField() {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || (!f.IsExported() && !f.Anonymous) {
			continue
		}
		if opts == "inline" && f.Type.Kind() == reflect.Struct {
			out = append(out, fieldsInOrder(f.Type)...)
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out = append(out, namedField{name, f})
	}
	return out
}

func typeName(t reflect.Type) string {
	switch {
	case t == durationType:
		return "a duration such as 30s, 15m or 1h"
	case t.Kind() == reflect.Bool:
		return "true or false"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Uint64:
		return "a whole number"
	case t.Kind() == reflect.Float32 || t.Kind() == reflect.Float64:
		return "a number"
	case t.Kind() == reflect.String:
		return "a string"
	}
	return t.String()
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return fmt.Sprintf("%q", n.Value)
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func pathOrRoot(path string) string {
	if path == "" {
		return "(top level)"
	}
	return path
}

// nilEmptySlices sets every empty slice reachable through struct fields of
// v to nil, so a config that says `join: []` equals one that leaves it out.
func nilEmptySlices(v reflect.Value) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			nilEmptySlices(v.Elem())
		}
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				nilEmptySlices(v.Field(i))
			}
		}
	case reflect.Slice:
		if v.Len() == 0 {
			if !v.IsNil() && v.CanSet() {
				v.SetZero()
			}
			return
		}
		for i := range v.Len() {
			nilEmptySlices(v.Index(i))
		}
	}
}
