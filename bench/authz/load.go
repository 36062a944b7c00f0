package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/palisade-mesh/palisade/bench/authz/policygen"
)

// The load generator, a process of its own (-serve load) pinned to its own CPU.
// It sends a scenario's request cycle from callers goroutines over conns gRPC
// connections: first for the warm-up, then, after printing "measuring", for the
// measured duration, after which it prints "done" and, once every call has
// returned, one line of JSON (loadResult). The orchestrator reads the server's
// CPU time at "measuring" and "done".

// loadResult is what one load run measured.
type loadResult struct {
	// Decisions are the calls completed within the measured window, of which Allowed
	// and Denied; Mismatched are those whose decision differs from the expected
	// one (-expect).
	Decisions, Allowed, Denied, Mismatched int64
	// Total counts every call, warm-up included; Errors the failed ones.
	Total, Errors int64
	FirstError    string        `json:",omitempty"`
	Window        time.Duration // the measured window
	P50, P99      time.Duration
	P999          time.Duration
}

// loadOptions are the load generator's flags.
type loadOptions struct {
	addr             string
	variants         []policygen.Variant
	expect           []int8 // per variant: 1 allowed, 0 denied, -1 any
	callers, conns   int
	warmup, duration time.Duration
}

// expectString encodes expected decisions for -expect: one character per variant,
// 'a' allowed, 'd' denied, '-' any.
func expectString(allowed []bool) string {
	var b strings.Builder
	for _, a := range allowed {
		if a {
			b.WriteByte('a')
		} else {
			b.WriteByte('d')
		}
	}
	return b.String()
}

func parseExpect(s string, n int) ([]int8, error) {
	out := make([]int8, n)
	for i := range out {
		out[i] = -1
	}
	if s == "" {
		return out, nil
	}
	if len(s) != n {
		return nil, fmt.Errorf("-expect has %d decisions for %d variants", len(s), n)
	}
	for i, c := range []byte(s) {
		switch c {
		case 'a':
			out[i] = 1
		case 'd':
			out[i] = 0
		}
	}
	return out, nil
}

func runLoad(o loadOptions) error {
	conns := make([]authv3.AuthorizationClient, o.conns)
	for i := range conns {
		conn, err := grpc.NewClient(o.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		conns[i] = authv3.NewAuthorizationClient(conn)
		if _, err := conns[i].Check(context.Background(), o.variants[0].Request); err != nil {
			return fmt.Errorf("connecting to %s: %w", o.addr, err)
		}
	}
	type callerStats struct {
		lat                            []time.Duration
		n, allowed, denied, mismatched int64
		total, errors                  int64
		firstErr                       error
		_                              [64]byte // apart from the next caller's
	}
	stats := make([]callerStats, o.callers)
	base := time.Now()
	var start, end atomic.Int64 // since base; 0: not yet
	var stop atomic.Bool
	var wg sync.WaitGroup
	for c := range o.callers {
		reqs := make([]*authv3.CheckRequest, len(o.variants))
		for i, v := range o.variants {
			reqs[i] = proto.Clone(v.Request).(*authv3.CheckRequest)
		}
		client := conns[c%len(conns)]
		st := &stats[c]
		st.lat = make([]time.Duration, 0, 1<<14)
		wg.Go(func() {
			ctx := context.Background()
			// Callers start at different places of the cycle, and number their
			// requests apart.
			n := uint64(c) * 7
			for !stop.Load() {
				vi := int(n % uint64(len(reqs)))
				req := reqs[vi]
				policygen.Renew(req, n|uint64(c)<<48)
				n++
				t0 := time.Since(base)
				resp, err := client.Check(ctx, req)
				t1 := time.Since(base)
				st.total++
				if err != nil {
					st.errors++
					if st.firstErr == nil {
						st.firstErr = err
					}
					continue
				}
				// Count the calls that complete within the window, as the
				// server's CPU time is that of the window.
				if s := start.Load(); s == 0 || int64(t1) < s {
					continue
				}
				if e := end.Load(); e != 0 && int64(t1) > e {
					continue
				}
				st.n++
				st.lat = append(st.lat, t1-t0)
				allowed, _ := decisionOf(resp)
				if allowed {
					st.allowed++
				} else {
					st.denied++
				}
				if want := o.expect[vi]; want >= 0 && allowed != (want == 1) {
					st.mismatched++
				}
			}
		})
	}
	time.Sleep(o.warmup)
	s := time.Since(base)
	start.Store(int64(s))
	fmt.Println("measuring")
	time.Sleep(o.duration)
	e := time.Since(base)
	end.Store(int64(e))
	stop.Store(true)
	fmt.Println("done")
	wg.Wait()

	r := loadResult{Window: e - s}
	var all []time.Duration
	for _, st := range stats {
		r.Decisions += st.n
		r.Allowed += st.allowed
		r.Denied += st.denied
		r.Mismatched += st.mismatched
		r.Total += st.total
		r.Errors += st.errors
		if st.firstErr != nil && r.FirstError == "" {
			r.FirstError = st.firstErr.Error()
		}
		all = append(all, st.lat...)
	}
	if len(all) > 0 {
		slices.Sort(all)
		r.P50, r.P99, r.P999 = nearestRank(all, 0.5), nearestRank(all, 0.99), nearestRank(all, 0.999)
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// nearestRank is the p-th (0..1) quantile of sorted durations.
func nearestRank(sorted []time.Duration, p float64) time.Duration {
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

// intList parses "1,16,64".
func intList(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}
