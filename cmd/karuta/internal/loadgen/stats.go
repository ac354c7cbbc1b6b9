package loadgen

import (
	"sync/atomic"
	"time"
)

// action is what a request asks.
type action int

const (
	actConnect action = iota
	actAnnounce
	actScrape
	nActions
)

var actionNames = [nActions]string{"connect", "announce", "scrape"}

// outcome classifies how a request ended.
type outcome int

const (
	// ok: a well-formed answer.
	ok outcome = iota
	// trackerError: the tracker refused, with a UDP error or an HTTP
	// failure reason.
	trackerError
	// malformed: an answer that is not one, such as a wrong action, a
	// truncated packet or an HTTP status without a failure reason.
	malformed
	// netError: the request could not be sent or its answer read.
	netError
	// timeout: no answer within the timeout.
	timeout
	nOutcomes
)

// stats counts outcomes, live for the progress line and, while recording,
// for the result. Safe for concurrent use.
type stats struct {
	recording atomic.Bool
	live      [nActions][nOutcomes]atomic.Uint64
	counts    [nActions][nOutcomes]atomic.Uint64
	// hist holds the latency of answers (ok, tracker errors, malformed).
	hist [nActions]Histogram
	// peers counts the peers in announce answers.
	peers atomic.Uint64
}

// record counts one request that ended with o after d; entries is the
// number of peers of an announce answer.
func (s *stats) record(a action, o outcome, d time.Duration, entries int) {
	s.live[a][o].Add(1)
	if !s.recording.Load() {
		return
	}
	s.counts[a][o].Add(1)
	if o <= malformed {
		s.hist[a].Record(d)
	}
	if a == actAnnounce && o == ok {
		s.peers.Add(uint64(entries))
	}
}

// result summarises what was recorded over elapsed.
func (s *stats) result(elapsed time.Duration) *Result {
	sec := elapsed.Seconds()
	r := &Result{Seconds: sec, Actions: map[string]*ActionResult{}}
	var all Histogram
	for a := range nActions {
		c := &s.counts[a]
		ar := &ActionResult{
			Responses:     c[ok].Load() + c[trackerError].Load() + c[malformed].Load(),
			TrackerErrors: c[trackerError].Load(),
			Malformed:     c[malformed].Load(),
			NetErrors:     c[netError].Load(),
			Timeouts:      c[timeout].Load(),
			Latency:       latencyOf(&s.hist[a]),
		}
		ar.PerSec = float64(ar.Responses) / sec
		r.Actions[actionNames[a]] = ar
		r.Responses += ar.Responses
		r.TrackerErrors += ar.TrackerErrors
		r.Malformed += ar.Malformed
		r.NetErrors += ar.NetErrors
		r.Timeouts += ar.Timeouts
		if a != actConnect {
			r.RequestsPerSec += ar.PerSec
		}
		all.Merge(&s.hist[a])
	}
	r.Errors = r.TrackerErrors + r.Malformed + r.NetErrors
	r.ResponsesPerSec = float64(r.Responses) / sec
	r.Latency = latencyOf(&all)
	if n := r.Actions["announce"].Responses - r.Actions["announce"].TrackerErrors - r.Actions["announce"].Malformed; n > 0 {
		r.PeersPerAnnounce = float64(s.peers.Load()) / float64(n)
	}
	return r
}

func latencyOf(h *Histogram) Latency {
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	return Latency{
		P50:  us(h.Quantile(0.50)),
		P90:  us(h.Quantile(0.90)),
		P99:  us(h.Quantile(0.99)),
		P999: us(h.Quantile(0.999)),
		Max:  us(h.Max()),
		Mean: us(h.Mean()),
	}
}

// serverUse turns two /proc samples into the tracker's CPU and memory use.
func serverUse(pids []int, before, after procSample, responses uint64) *Server {
	cpu, src := cpuBetween(before, after)
	s := &Server{PIDs: pids, CPUSeconds: cpu.Seconds(), CPUSource: src, PeakRSSBytes: after.peakRSS}
	if responses > 0 {
		s.CPUPerRequestUS = float64(cpu) / float64(time.Microsecond) / float64(responses)
	}
	return s
}
