package main

import (
	"context"
	"log/slog"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// leaseName is the Lease the replicas of palisaded contend for.
const leaseName = "palisaded-leader"

// leaderConfig configures the leader election of palisaded's replicas.
type leaderConfig struct {
	Client    kubernetes.Interface
	Namespace string
	Identity  string // the pod's name: unique among the replicas
	// LeaseDuration is how long a leader that vanished without releasing its lease
	// (killed, partitioned) keeps it; renewals come every LeaseDuration/7.
	LeaseDuration time.Duration
	Logger        *slog.Logger
}

// runAsLeader runs work, the singleton tasks of the mesh (status, webhook caBundle,
// CA roots in namespaces), while this replica holds the lease, and contends again
// after losing it, until ctx ends. Every replica serves xDS, the CA and the webhooks
// regardless; only writes to the cluster that one writer should make are here.
func runAsLeader(ctx context.Context, cfg leaderConfig, work []func(context.Context) error) error {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: leaseName, Namespace: cfg.Namespace},
		Client:     cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: cfg.Identity},
	}
	for ctx.Err() == nil {
		elector, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   cfg.LeaseDuration,
			RenewDeadline:   cfg.LeaseDuration * 2 / 3,
			RetryPeriod:     cfg.LeaseDuration / 7,
			ReleaseOnCancel: true, // a replica shutting down hands over at once
			Name:            leaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					cfg.Logger.Info("leading: running the singleton work", "lease", cfg.Namespace+"/"+leaseName, "identity", cfg.Identity)
					var wg sync.WaitGroup
					for _, w := range work {
						wg.Go(func() {
							if err := w(ctx); err != nil && ctx.Err() == nil {
								cfg.Logger.Error("leader task stopped", "err", err)
							}
						})
					}
					wg.Wait()
				},
				OnStoppedLeading: func() {
					cfg.Logger.Info("not leading", "lease", cfg.Namespace+"/"+leaseName, "identity", cfg.Identity)
				},
				OnNewLeader: func(id string) {
					if id != cfg.Identity {
						cfg.Logger.Info("leader elected", "leader", id)
					}
				},
			},
		})
		if err != nil {
			return err
		}
		elector.Run(ctx) // returns when leadership is lost or ctx ends
	}
	return nil
}
