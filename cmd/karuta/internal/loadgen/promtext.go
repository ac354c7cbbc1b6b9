package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// series is one sample of a Prometheus text page: a metric name, its
// labels and its value.
type series struct {
	name   string
	labels map[string]string
	value  float64
}

// label returns the value of label k, "" when the series has none.
func (s series) label(k string) string { return s.labels[k] }

// metricPage is one scrape of a metrics page, by series key (seriesKey).
type metricPage map[string]series

// seriesKey names a series as Prometheus prints it, labels sorted:
// name{a="x",b="y"}, or the bare name when it has no labels.
func seriesKey(name string, labels map[string]string) string {
	if len(labels) == 0 {
		return name
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	b.WriteString(name)
	b.WriteByte('{')
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(strconv.Quote(labels[k]))
	}
	b.WriteByte('}')
	return b.String()
}

// sum adds the values of every series of metric name.
func (p metricPage) sum(name string) float64 {
	var t float64
	for _, s := range p {
		if s.name == name {
			t += s.value
		}
	}
	return t
}

// has reports whether the page carries metric name at all.
func (p metricPage) has(name string) bool {
	for _, s := range p {
		if s.name == name {
			return true
		}
	}
	return false
}

// parseMetricPage reads the Prometheus text exposition format (version
// 0.0.4): one sample a line, "name{label="value",...} value [timestamp]",
// comments and blank lines skipped. Histogram and summary samples come
// through as the plain series they are (name_bucket, name_sum, ...).
func parseMetricPage(b []byte) (metricPage, error) {
	page := metricPage{}
	for n := 1; len(b) > 0; n++ {
		var line []byte
		line, b, _ = bytes.Cut(b, []byte("\n"))
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		s, err := parseSample(string(line))
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		page[seriesKey(s.name, s.labels)] = s
	}
	return page, nil
}

var errSample = errors.New("not a sample line")

// parseSample parses one sample line.
func parseSample(line string) (series, error) {
	var s series
	i := strings.IndexAny(line, "{ \t")
	if i <= 0 {
		return s, errSample
	}
	s.name = line[:i]
	if !validMetricName(s.name) {
		return s, fmt.Errorf("bad metric name %q", s.name)
	}
	rest := line[i:]
	if rest[0] == '{' {
		var err error
		if s.labels, rest, err = parseLabels(rest[1:]); err != nil {
			return s, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	f := strings.Fields(rest)
	if len(f) < 1 || len(f) > 2 {
		return s, fmt.Errorf("%s: want a value and an optional timestamp, got %q", s.name, rest)
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return s, fmt.Errorf("%s: value: %w", s.name, err)
	}
	s.value = v
	return s, nil
}

// parseLabels parses `a="x",b="y"}` (after the opening brace) and returns
// the labels and what follows the closing brace.
func parseLabels(in string) (map[string]string, string, error) {
	labels := map[string]string{}
	for {
		in = strings.TrimLeft(in, " \t")
		if in == "" {
			return nil, "", errors.New("labels: no closing brace")
		}
		if in[0] == '}' {
			return labels, in[1:], nil
		}
		eq := strings.IndexByte(in, '=')
		if eq <= 0 {
			return nil, "", errors.New("labels: want name=\"value\"")
		}
		name := strings.TrimSpace(in[:eq])
		if !validLabelName(name) {
			return nil, "", fmt.Errorf("labels: bad name %q", name)
		}
		in = strings.TrimLeft(in[eq+1:], " \t")
		if in == "" || in[0] != '"' {
			return nil, "", fmt.Errorf("labels: %s: value not quoted", name)
		}
		var val strings.Builder
		j := 1
		for ; j < len(in) && in[j] != '"'; j++ {
			c := in[j]
			if c != '\\' {
				val.WriteByte(c)
				continue
			}
			j++
			if j == len(in) {
				break
			}
			switch in[j] {
			case 'n':
				val.WriteByte('\n')
			case '\\', '"':
				val.WriteByte(in[j])
			default:
				return nil, "", fmt.Errorf("labels: %s: bad escape \\%c", name, in[j])
			}
		}
		if j >= len(in) {
			return nil, "", fmt.Errorf("labels: %s: value not closed", name)
		}
		if _, dup := labels[name]; dup {
			return nil, "", fmt.Errorf("labels: %s twice", name)
		}
		labels[name] = val.String()
		in = strings.TrimLeft(in[j+1:], " \t")
		if in != "" && in[0] == ',' {
			in = in[1:]
		} else if in == "" || in[0] != '}' {
			return nil, "", errors.New("labels: want ',' or '}' after a value")
		}
	}
}

func validMetricName(s string) bool {
	for i := range len(s) {
		c := s[i]
		letter := c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
		if !letter && (i == 0 || c < '0' || c > '9') {
			return false
		}
	}
	return s != ""
}

func validLabelName(s string) bool {
	return validMetricName(s) && !strings.Contains(s, ":")
}
