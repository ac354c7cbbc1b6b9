package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// dashboard is the part of a Grafana dashboard JSON the check reads.
type dashboard struct {
	Time struct {
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"time"`
	Templating struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type panel struct {
	Title         string   `json:"title"`
	Type          string   `json:"type"`
	Interval      string   `json:"interval"`
	MaxDataPoints int      `json:"maxDataPoints"`
	Targets       []target `json:"targets"`
	Panels        []panel  `json:"panels"` // collapsed rows hold their panels
}

type target struct {
	Expr         string `json:"expr"`
	RefID        string `json:"refId"`
	Hide         bool   `json:"hide"`
	Interval     string `json:"interval"`
	LegendFormat string `json:"legendFormat"`
}

// variable is a dashboard template variable.
type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Definition string          `json:"definition"`
	Regex      string          `json:"regex"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
	AllValue   string          `json:"allValue"`
	Current    struct {
		Value json.RawMessage `json:"value"`
	} `json:"current"`
	Options []struct {
		Value string `json:"value"`
	} `json:"options"`
}

// queryText is the variable's query, which Grafana stores either as a
// string or as an object with a query field.
func (v *variable) queryText() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil && s != "" {
		return s
	}
	var o struct {
		Query string `json:"query"`
	}
	if json.Unmarshal(v.Query, &o) == nil && o.Query != "" {
		return o.Query
	}
	return v.Definition
}

// value is a resolved variable: the values it stands for, and whether it
// is "All" with a custom all value, which Grafana inserts as written.
type value struct {
	values   []string
	all      bool
	allValue string
	multi    bool // multi or includeAll: Grafana formats it as a regex
}

// format renders a variable as Grafana's Prometheus data source does in a
// query: a single plain value escaped for a string, anything that may be
// several values as a regex alternation, a custom all value as written.
func (v value) format(fmtName string) (string, error) {
	if v.all && v.allValue != "" && (fmtName == "" || fmtName == "regex" || fmtName == "raw") {
		return v.allValue, nil
	}
	switch fmtName {
	case "raw":
		return strings.Join(v.values, ","), nil
	case "csv":
		return strings.Join(v.values, ","), nil
	case "pipe":
		return strings.Join(v.values, "|"), nil
	case "regex":
		return regexAlternation(v.values), nil
	case "":
		if !v.multi {
			if len(v.values) == 0 {
				return "", nil
			}
			return strings.NewReplacer(`\`, `\\`, `'`, `\\'`).Replace(v.values[0]), nil
		}
		if len(v.values) == 1 {
			return promRegexEscape(v.values[0]), nil
		}
		return regexAlternation(v.values), nil
	}
	return "", fmt.Errorf("format :%s is not supported by this check", fmtName)
}

func regexAlternation(vals []string) string {
	esc := make([]string, len(vals))
	for i, s := range vals {
		esc[i] = promRegexEscape(s)
	}
	return "(" + strings.Join(esc, "|") + ")"
}

// promRegexEscape escapes regex metacharacters twice over, as Grafana
// does, because the value lands inside a PromQL string literal.
func promRegexEscape(s string) string {
	return regexp.MustCompile(`[\\^$*+?.()|{}\[\]]`).ReplaceAllString(s, `\\$0`)
}

// varRef matches $name, ${name}, ${name:format} and [[name]] / [[name:format]].
var varRef = regexp.MustCompile(`\$(\w+)|\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)(?::(\w+))?\]\]`)

// interpolate replaces every variable reference in expr. An unknown
// variable is an error: Grafana would send it as written and the query
// would fail or match nothing.
func interpolate(expr string, vars map[string]value, builtins map[string]string) (string, error) {
	var err error
	out := varRef.ReplaceAllStringFunc(expr, func(m string) string {
		sub := varRef.FindStringSubmatch(m)
		name, format := sub[1], ""
		switch {
		case sub[2] != "":
			name, format = sub[2], sub[3]
		case sub[4] != "":
			name, format = sub[4], sub[5]
		}
		if b, ok := builtins[name]; ok {
			return b
		}
		v, ok := vars[name]
		if !ok {
			err = errors.Join(err, fmt.Errorf("unknown variable %q", name))
			return m
		}
		s, ferr := v.format(format)
		err = errors.Join(err, ferr)
		return s
	})
	return out, err
}

// roundInterval rounds a raw interval to the steps Grafana uses for
// $__interval, so the checked queries use the same ranges.
func roundInterval(d time.Duration) time.Duration {
	steps := []struct{ below, to time.Duration }{
		{15 * time.Millisecond, 10 * time.Millisecond},
		{35 * time.Millisecond, 20 * time.Millisecond},
		{75 * time.Millisecond, 50 * time.Millisecond},
		{150 * time.Millisecond, 100 * time.Millisecond},
		{350 * time.Millisecond, 200 * time.Millisecond},
		{750 * time.Millisecond, 500 * time.Millisecond},
		{1500 * time.Millisecond, time.Second},
		{3500 * time.Millisecond, 2 * time.Second},
		{7500 * time.Millisecond, 5 * time.Second},
		{12500 * time.Millisecond, 10 * time.Second},
		{17500 * time.Millisecond, 15 * time.Second},
		{25 * time.Second, 20 * time.Second},
		{45 * time.Second, 30 * time.Second},
		{90 * time.Second, time.Minute},
		{210 * time.Second, 2 * time.Minute},
		{450 * time.Second, 5 * time.Minute},
		{750 * time.Second, 10 * time.Minute},
		{1050 * time.Second, 15 * time.Minute},
		{1500 * time.Second, 20 * time.Minute},
		{2700 * time.Second, 30 * time.Minute},
		{5400 * time.Second, time.Hour},
		{9000 * time.Second, 2 * time.Hour},
		{16200 * time.Second, 3 * time.Hour},
		{32400 * time.Second, 6 * time.Hour},
		{86400 * time.Second, 12 * time.Hour},
	}
	for _, s := range steps {
		if d < s.below {
			return s.to
		}
	}
	return 24 * time.Hour
}

// intervals computes $__interval and $__rate_interval the way Grafana
// does for a panel: the dashboard range over the data points, rounded,
// at least the min interval (the panel's, else the data source's scrape
// interval); the rate interval is at least four scrapes and one step plus
// a scrape.
func intervals(rng time.Duration, maxDataPoints int, minInterval, scrape time.Duration) (interval, rate time.Duration) {
	if maxDataPoints <= 0 {
		maxDataPoints = defaultDataPoints
	}
	interval = roundInterval(rng / time.Duration(maxDataPoints))
	interval = max(interval, minInterval, scrape)
	rate = max(interval+scrape, 4*scrape)
	return interval, rate
}

// defaultDataPoints stands for the width of a panel in pixels, which is
// what Grafana asks for when a panel sets no maxDataPoints.
const defaultDataPoints = 1000

// parseRelative reads Grafana's "now-1h" style; "now" is 0.
func parseRelative(s string) (time.Duration, error) {
	if s == "" || s == "now" {
		return 0, nil
	}
	rest, ok := strings.CutPrefix(s, "now-")
	if !ok {
		return 0, fmt.Errorf("time %q: only now-N is supported", s)
	}
	if n, unit := rest[:len(rest)-1], rest[len(rest)-1]; unit == 'd' || unit == 'w' {
		k, err := strconv.Atoi(n)
		if err != nil {
			return 0, fmt.Errorf("time %q: %w", s, err)
		}
		d := time.Duration(k) * 24 * time.Hour
		if unit == 'w' {
			d *= 7
		}
		return d, nil
	}
	d, err := time.ParseDuration(rest)
	if err != nil {
		return 0, fmt.Errorf("time %q: %w", s, err)
	}
	return d, nil
}

// minInterval reads a panel's or target's "min interval" (">=15s" or "15s").
func minInterval(s string) (time.Duration, error) {
	s = strings.TrimPrefix(strings.TrimSpace(s), ">=")
	if s == "" {
		return 0, nil
	}
	return time.ParseDuration(s)
}

// prom is a small client of the Prometheus HTTP API.
type prom struct {
	base string
	hc   *http.Client
}

// apiResult is the envelope of every Prometheus API answer.
type apiResult struct {
	Status string          `json:"status"`
	Error  string          `json:"error"`
	Data   json.RawMessage `json:"data"`
}

func (p *prom) get(ctx context.Context, path string, q url.Values) (json.RawMessage, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+path+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 32<<20))
	if err != nil {
		return nil, err
	}
	var r apiResult
	if err := json.Unmarshal(body, &r); err != nil {
		return nil, fmt.Errorf("%s: status %d, not an API answer: %.200s", path, resp.StatusCode, body)
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("%s: %s", path, r.Error)
	}
	return r.Data, nil
}

// labelValues answers label_values(selector, label) or label_values(label).
func (p *prom) labelValues(ctx context.Context, selector, label string, start, end time.Time) ([]string, error) {
	q := url.Values{"start": {unix(start)}, "end": {unix(end)}}
	if selector != "" {
		q.Set("match[]", selector)
	}
	data, err := p.get(ctx, "/api/v1/label/"+url.PathEscape(label)+"/values", q)
	if err != nil {
		return nil, err
	}
	var vals []string
	return vals, json.Unmarshal(data, &vals)
}

// series is one series of a range query, with how many of its points are
// numbers (histogram_quantile over no observations gives NaN).
type series struct {
	metric  map[string]string
	numbers int
}

func (p *prom) queryRange(ctx context.Context, expr string, start, end time.Time, step time.Duration) ([]series, error) {
	data, err := p.get(ctx, "/api/v1/query_range", url.Values{
		"query": {expr}, "start": {unix(start)}, "end": {unix(end)}, "step": {strconv.FormatFloat(step.Seconds(), 'f', -1, 64)},
	})
	if err != nil {
		return nil, err
	}
	var m struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Values [][2]any          `json:"values"`
		} `json:"result"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, err
	}
	out := make([]series, 0, len(m.Result))
	for _, r := range m.Result {
		s := series{metric: r.Metric}
		for _, v := range r.Values {
			str, _ := v[1].(string)
			if f, err := strconv.ParseFloat(str, 64); err == nil && !math.IsNaN(f) && !math.IsInf(f, 0) {
				s.numbers++
			}
		}
		out = append(out, s)
	}
	return out, nil
}

func unix(t time.Time) string { return strconv.FormatFloat(float64(t.UnixMilli())/1000, 'f', 3, 64) }

// labelValuesCall parses label_values(selector, label) and label_values(label).
var labelValuesCall = regexp.MustCompile(`^\s*label_values\(\s*(?:(.*?)\s*,\s*)?(\w+)\s*\)\s*$`)

// resolveVariables resolves the dashboard's variables in order, each
// seeing those before it, as Grafana does on load with nothing selected:
// "All" where the variable offers it, else the first value.
func resolveVariables(ctx context.Context, p *prom, d *dashboard, builtins map[string]string, start, end time.Time) (map[string]value, error) {
	vars := map[string]value{}
	for _, v := range d.Templating.List {
		var vals []string
		switch v.Type {
		case "datasource":
			continue // only ever used as a data source uid, not in expressions
		case "query":
			q, err := interpolate(v.queryText(), vars, builtins)
			if err != nil {
				return nil, fmt.Errorf("variable %s: %w", v.Name, err)
			}
			m := labelValuesCall.FindStringSubmatch(q)
			if m == nil {
				return nil, fmt.Errorf("variable %s: query %q: only label_values(...) is supported by this check", v.Name, q)
			}
			if vals, err = p.labelValues(ctx, m[1], m[2], start, end); err != nil {
				return nil, fmt.Errorf("variable %s: %w", v.Name, err)
			}
		case "custom", "interval":
			for _, o := range v.Options {
				vals = append(vals, o.Value)
			}
		case "constant", "textbox":
			vals = []string{v.queryText()}
		default:
			return nil, fmt.Errorf("variable %s: type %q is not supported by this check", v.Name, v.Type)
		}
		if v.Regex != "" {
			re, err := regexp.Compile(strings.Trim(v.Regex, "/"))
			if err != nil {
				return nil, fmt.Errorf("variable %s: regex: %w", v.Name, err)
			}
			kept := vals[:0]
			for _, s := range vals {
				if m := re.FindStringSubmatch(s); m != nil {
					if len(m) > 1 {
						s = m[1]
					}
					kept = append(kept, s)
				}
			}
			vals = kept
		}
		if len(vals) == 0 {
			return nil, fmt.Errorf("variable %s: no values: the dashboard would show nothing", v.Name)
		}
		val := value{multi: v.Multi || v.IncludeAll}
		if v.IncludeAll {
			val.values, val.all, val.allValue = vals, true, v.AllValue
		} else {
			val.values = vals[:1]
		}
		vars[v.Name] = val
	}
	return vars, nil
}

// checkDashboard runs every expression of every panel of the dashboard in
// file over the last window, as Grafana would, and fails unless each
// returns at least one series with a number in it.
func checkDashboard(ctx context.Context, p *prom, file string, window, scrape time.Duration, out io.Writer) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	rng, err := parseRelative(d.Time.From)
	if err != nil {
		return err
	}
	end := time.Now()
	start := end.Add(-window)
	var panels []panel
	var flatten func([]panel)
	flatten = func(ps []panel) {
		for _, p := range ps {
			panels = append(panels, p)
			flatten(p.Panels)
		}
	}
	flatten(d.Panels)

	base := map[string]string{
		"__range": fmt.Sprintf("%ds", int(rng.Seconds())), "__range_s": strconv.Itoa(int(rng.Seconds())),
		"__range_ms": strconv.FormatInt(rng.Milliseconds(), 10),
	}
	vars, err := resolveVariables(ctx, p, &d, base, start, end)
	if err != nil {
		return err
	}
	var failed, total int
	for _, pn := range panels {
		for _, t := range pn.Targets {
			if t.Expr == "" || t.Hide {
				continue
			}
			total++
			minIv, err := minInterval(t.Interval)
			if err == nil && minIv == 0 {
				minIv, err = minInterval(pn.Interval)
			}
			if err != nil {
				return fmt.Errorf("panel %q: interval: %w", pn.Title, err)
			}
			iv, rate := intervals(rng, pn.MaxDataPoints, minIv, scrape)
			builtins := map[string]string{
				"__interval": promDuration(iv), "__interval_ms": strconv.FormatInt(iv.Milliseconds(), 10),
				"__rate_interval": promDuration(rate),
			}
			for k, v := range base {
				builtins[k] = v
			}
			expr, err := interpolate(t.Expr, vars, builtins)
			if err != nil {
				failed++
				fmt.Fprintf(out, "FAIL  %s [%s]: %v\n", pn.Title, t.RefID, err)
				continue
			}
			ss, err := p.queryRange(ctx, expr, start, end, iv)
			numbers := 0
			for _, s := range ss {
				numbers += s.numbers
			}
			switch {
			case err != nil:
				failed++
				fmt.Fprintf(out, "FAIL  %s [%s]: %v\n      %s\n", pn.Title, t.RefID, err, expr)
			case len(ss) == 0:
				failed++
				fmt.Fprintf(out, "FAIL  %s [%s]: no series\n      %s\n", pn.Title, t.RefID, expr)
			case numbers == 0:
				failed++
				fmt.Fprintf(out, "FAIL  %s [%s]: %d series, none with a number (NaN only)\n      %s\n", pn.Title, t.RefID, len(ss), expr)
			default:
				fmt.Fprintf(out, "ok    %s [%s]: %d series\n", pn.Title, t.RefID, len(ss))
			}
		}
	}
	if total == 0 {
		return fmt.Errorf("%s: no expressions found; is it a Grafana dashboard?", file)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d dashboard expressions returned no data", failed, total)
	}
	fmt.Fprintf(out, "all %d dashboard expressions returned data\n", total)
	return nil
}

// promDuration writes d in PromQL duration syntax (whole milliseconds).
func promDuration(d time.Duration) string {
	if d%time.Second == 0 {
		return fmt.Sprintf("%ds", int64(d/time.Second))
	}
	return fmt.Sprintf("%dms", d.Milliseconds())
}
