package agent

import (
	"context"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// BenchmarkFetchX509SVID measures complete fetches through go-spiffe's client
// over the real Unix socket: stream setup, attestation, the response, and the
// client's parsing and validation of the SVID.
func BenchmarkFetchX509SVID(b *testing.B) {
	for _, v := range []struct {
		name string
		opts []harnessOpt
	}{
		{"cached", nil},
		{"uncached", []harnessOpt{withoutViewCache()}},
	} {
		b.Run(v.name+"/serial", func(b *testing.B) {
			h := startHarness(b, v.opts...)
			h.federate()
			ctx := context.Background()
			c := h.client(ctx)
			if _, err := c.FetchX509SVID(ctx); err != nil { // connect outside the timer
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := c.FetchX509SVID(ctx); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "fetches/s")
		})
		// Many workloads at once: each goroutine is its own client connection.
		b.Run(v.name+"/parallel", func(b *testing.B) {
			h := startHarness(b, v.opts...)
			h.federate()
			ctx := context.Background()
			b.SetParallelism(4)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+h.path))
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				for pb.Next() {
					if _, err := c.FetchX509SVID(ctx); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "fetches/s")
		})
	}
}

// BenchmarkX509SVIDView isolates the server-side cost the memo removes:
// assembling the response (and, with it, the proto marshal on a hit being of
// a shared, already-sized message).
func BenchmarkX509SVIDView(b *testing.B) {
	ca, fed := newTestCA(b, tdMain), newTestCA(b, fedTD)
	s := NewStore()
	s.SetBundles(spiffebundleSet(b, ca, fed))
	s.SetSVID(ca.issue(b, idA))
	ids := []spiffeid.ID{idA}
	for _, noCache := range []bool{false, true} {
		name := "cached"
		if noCache {
			name = "uncached"
		}
		b.Run(name, func(b *testing.B) {
			srv, err := NewServer(ServerConfig{SocketPath: "unused", Store: s, Attestor: AllowAll(idA)})
			if err != nil {
				b.Fatal(err)
			}
			srv.noViewCache = noCache
			st := s.load()
			b.ReportAllocs()
			for range b.N {
				if v := srv.x509SVIDView(st, ids); v.msg == nil {
					b.Fatal("no view")
				}
			}
		})
	}
}
