package kubeca

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// The ConfigMap of every namespace that holds the trust domain's roots.
const (
	RootConfigMap = "palisade-ca-root-cert"
	RootKey       = "root-cert.pem"
)

// RootsConfig configures a RootPublisher.
type RootsConfig struct {
	Client kubernetes.Interface
	// Roots returns the current roots in PEM; Changed is closed when they change
	// (the CA's RootsPEM and Changed).
	Roots   func() []byte
	Changed func() <-chan struct{}
	Logger  *slog.Logger
}

// PublishRoots keeps the ConfigMap RootConfigMap with the current roots in every
// namespace: written when a namespace appears, when someone edits or deletes the
// ConfigMap, and when the roots change. It runs until ctx ends; palisaded runs it
// on the leader only.
func PublishRoots(ctx context.Context, cfg RootsConfig) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	factory := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0)
	namespaces := factory.Core().V1().Namespaces()
	configMaps := informers.NewSharedInformerFactoryWithOptions(cfg.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + RootConfigMap })).Core().V1().ConfigMaps()
	queue := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	defer queue.ShutDown()
	enqueueNamespace := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok {
			queue.Add(ns.Name)
		}
	}
	enqueueConfigMap := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if cm, ok := obj.(*corev1.ConfigMap); ok {
			queue.Add(cm.Namespace)
		}
	}
	if _, err := namespaces.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueueNamespace}); err != nil {
		return err
	}
	if _, err := configMaps.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(_, obj any) { enqueueConfigMap(obj) },
		DeleteFunc: enqueueConfigMap,
	}); err != nil {
		return err
	}
	go namespaces.Informer().Run(ctx.Done())
	go configMaps.Informer().Run(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), namespaces.Informer().HasSynced, configMaps.Informer().HasSynced) {
		return nil
	}
	go func() { // roots changed: every namespace again
		for changed := cfg.Changed(); ; changed = cfg.Changed() {
			select {
			case <-ctx.Done():
				return
			case <-changed:
			}
			for _, ns := range namespaces.Informer().GetStore().ListKeys() {
				queue.Add(ns)
			}
		}
	}()
	go func() { <-ctx.Done(); queue.ShutDown() }()
	for {
		ns, quit := queue.Get()
		if quit {
			return nil
		}
		err := publish(ctx, cfg.Client, configMaps.Lister().ConfigMaps(ns), namespaces.Lister(), ns, cfg.Roots())
		if err != nil && ctx.Err() == nil {
			log.Warn("publishing the CA roots", "namespace", ns, "configmap", RootConfigMap, "err", err)
			queue.AddRateLimited(ns)
		} else {
			queue.Forget(ns)
		}
		queue.Done(ns)
	}
}

type configMapGetter interface {
	Get(name string) (*corev1.ConfigMap, error)
}

type namespaceGetter interface {
	Get(name string) (*corev1.Namespace, error)
}

// publish writes the roots into one namespace's ConfigMap unless they are there.
func publish(ctx context.Context, client kubernetes.Interface, cms configMapGetter, nss namespaceGetter, ns string, roots []byte) error {
	if n, err := nss.Get(ns); err != nil || n.DeletionTimestamp != nil {
		return nil // gone or going: nothing to write into
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	want := map[string]string{RootKey: string(roots)}
	cm, err := cms.Get(RootConfigMap)
	if apierrors.IsNotFound(err) {
		_, err = client.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: RootConfigMap, Labels: map[string]string{"app.kubernetes.io/part-of": "palisade"}},
			Data:       want,
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("created meanwhile; will compare again: %w", err)
		}
		return err
	}
	if err != nil {
		return err
	}
	if bytes.Equal([]byte(cm.Data[RootKey]), roots) && len(cm.Data) == 1 {
		return nil
	}
	cm = cm.DeepCopy()
	cm.Data = want
	_, err = client.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{})
	return err
}
