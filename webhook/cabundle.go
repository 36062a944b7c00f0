package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// The webhook configurations of Palisade's install manifests.
const (
	MutatingConfigurationName   = "palisade-sidecar-injector"
	ValidatingConfigurationName = "palisade-validator"
)

// DefaultResync is how often KeepCABundle compares the configurations with the CA
// bundle when nothing else happens, which is how it sees the bundle change.
const DefaultResync = time.Minute

// fieldManager names palisaded as the writer of the caBundle fields.
const fieldManager = "palisaded"

// KeepConfig configures KeepCABundle.
type KeepConfig struct {
	Client kubernetes.Interface
	// MutatingName and ValidatingName name the configurations to keep; ""
	// means MutatingConfigurationName and ValidatingConfigurationName.
	MutatingName   string
	ValidatingName string
	// CABundle returns the PEM roots that verify the webhook server's certificate;
	// while it returns nothing, nothing is written.
	CABundle func() []byte
	// Resync is how often the configurations are compared with CABundle without an
	// event; 0 means DefaultResync.
	Resync time.Duration
	Logger *slog.Logger
}

// KeepCABundle keeps clientConfig.caBundle of every webhook of the two webhook
// configurations equal to CABundle(), until ctx ends. It watches just those two
// objects: a configuration that does not exist yet is patched when it is created,
// and one that someone re-applies (with the manifests' empty caBundle) is patched
// again. Only the caBundle fields are written, each guarded by a test of the
// webhook's name, so that a configuration edited in between is never patched at
// the wrong index; a failed patch is retried with backoff. palisaded runs it on the
// leader only. It returns nil when ctx ends, or an error for a bad configuration.
func KeepCABundle(ctx context.Context, cfg KeepConfig) error {
	if cfg.Client == nil || cfg.CABundle == nil {
		return errors.New("KeepCABundle: Client and CABundle are required")
	}
	if cfg.MutatingName == "" {
		cfg.MutatingName = MutatingConfigurationName
	}
	if cfg.ValidatingName == "" {
		cfg.ValidatingName = ValidatingConfigurationName
	}
	if cfg.Resync <= 0 {
		cfg.Resync = DefaultResync
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	admission := cfg.Client.AdmissionregistrationV1()
	kept := []*keptConfiguration{
		{
			kind: "MutatingWebhookConfiguration", name: cfg.MutatingName,
			informer: func(f informers.SharedInformerFactory) cache.SharedIndexInformer {
				return f.Admissionregistration().V1().MutatingWebhookConfigurations().Informer()
			},
			webhooks: func(obj any) (out []webhookCA) {
				if c, ok := obj.(*admissionregistrationv1.MutatingWebhookConfiguration); ok {
					for _, w := range c.Webhooks {
						out = append(out, webhookCA{w.Name, w.ClientConfig.CABundle})
					}
				}
				return out
			},
			patch: func(ctx context.Context, name string, patch []byte) error {
				_, err := admission.MutatingWebhookConfigurations().Patch(ctx, name, types.JSONPatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
				return err
			},
		},
		{
			kind: "ValidatingWebhookConfiguration", name: cfg.ValidatingName,
			informer: func(f informers.SharedInformerFactory) cache.SharedIndexInformer {
				return f.Admissionregistration().V1().ValidatingWebhookConfigurations().Informer()
			},
			webhooks: func(obj any) (out []webhookCA) {
				if c, ok := obj.(*admissionregistrationv1.ValidatingWebhookConfiguration); ok {
					for _, w := range c.Webhooks {
						out = append(out, webhookCA{w.Name, w.ClientConfig.CABundle})
					}
				}
				return out
			},
			patch: func(ctx context.Context, name string, patch []byte) error {
				_, err := admission.ValidatingWebhookConfigurations().Patch(ctx, name, types.JSONPatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
				return err
			},
		},
	}

	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[*keptConfiguration]())
	var factories []informers.SharedInformerFactory
	for _, k := range kept {
		// One factory per object: its list and watch select the object by name.
		factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, cfg.Resync,
			informers.WithTweakListOptions(func(o *metav1.ListOptions) {
				o.FieldSelector = fields.OneTermEqualSelector("metadata.name", k.name).String()
			}))
		informer := k.informer(factory)
		enqueue := func(any) { queue.Add(k) }
		if _, err := informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    enqueue,
			UpdateFunc: func(_, obj any) { enqueue(obj) }, // resyncs too: the bundle may have changed
		}); err != nil {
			return fmt.Errorf("KeepCABundle: watching %s %s: %w", k.kind, k.name, err)
		}
		k.store = informer.GetStore()
		factories = append(factories, factory)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		for _, f := range factories {
			f.Shutdown() // waits for the informers' goroutines
		}
	}()
	for _, f := range factories {
		f.Start(ctx.Done())
	}
	go func() {
		<-ctx.Done()
		queue.ShutDown()
	}()
	for {
		k, shutdown := queue.Get()
		if shutdown {
			return nil
		}
		if err := k.reconcile(ctx, cfg.CABundle(), log); err != nil && ctx.Err() == nil {
			log.Warn("caBundle not updated; retrying", "kind", k.kind, "name", k.name, "error", err)
			queue.AddRateLimited(k)
		} else {
			queue.Forget(k)
		}
		queue.Done(k)
	}
}

// keptConfiguration is one webhook configuration whose caBundle is kept.
type keptConfiguration struct {
	kind, name string
	informer   func(informers.SharedInformerFactory) cache.SharedIndexInformer
	webhooks   func(obj any) []webhookCA
	patch      func(ctx context.Context, name string, patch []byte) error
	store      cache.Store
}

// webhookCA is a webhook of a configuration, with its caBundle.
type webhookCA struct {
	name     string
	caBundle []byte
}

// reconcile patches the webhooks whose caBundle is not want.
func (k *keptConfiguration) reconcile(ctx context.Context, want []byte, log *slog.Logger) error {
	if len(want) == 0 {
		return nil
	}
	obj, exists, err := k.store.GetByKey(k.name)
	if err != nil || !exists {
		return err // not created yet: its creation is an event
	}
	var ops []patchOp
	var patched []string
	for i, w := range k.webhooks(obj) {
		if bytes.Equal(w.caBundle, want) {
			continue
		}
		ops = append(ops,
			patchOp{"test", fmt.Sprintf("/webhooks/%d/name", i), w.name},
			patchOp{"add", fmt.Sprintf("/webhooks/%d/clientConfig/caBundle", i), want}) // []byte: base64, as the API wants
		patched = append(patched, w.name)
	}
	if len(ops) == 0 {
		return nil
	}
	patch, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	switch err := k.patch(ctx, k.name, patch); {
	case apierrors.IsNotFound(err):
		return nil // deleted meanwhile; a new one is an event
	case err != nil:
		return fmt.Errorf("patching %s %s: %w", k.kind, k.name, err)
	}
	log.Info("webhook caBundle updated", "kind", k.kind, "name", k.name, "webhooks", patched)
	return nil
}
