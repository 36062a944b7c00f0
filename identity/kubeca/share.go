// Package kubeca is the CA's part of running in Kubernetes: several palisaded
// replicas share one CA through a Secret, and the trust domain's roots are published
// in a ConfigMap of every namespace, where injected agents read them to trust
// palisaded before their first SVID.
package kubeca

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// DefaultSecretName is the Secret holding the CA state in palisaded's namespace.
const DefaultSecretName = "palisade-ca"

// maxStateFiles bounds what is read back from a Secret: the CA keeps a state file
// and three files per key slot, of which there are a handful.
const maxStateFiles = 64

// Share makes the CA state directory dir (DataDir/ca) hold the state stored in the
// Secret, so that every replica signs with the same keys. When there is no Secret
// yet, open creates the state (a new CA writes dir) and it is stored as the Secret;
// a replica that loses the race to create it takes the winner's state instead.
// open is called once dir holds the state to use, and its result returned.
func Share[CA any](ctx context.Context, secrets corev1client.SecretInterface, name, dir string, open func() (CA, error)) (CA, error) {
	var zero CA
	secret, err := secrets.Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
		if err := restore(dir, secret); err != nil {
			return zero, err
		}
		return open()
	case !apierrors.IsNotFound(err):
		return zero, fmt.Errorf("reading the CA Secret %s: %w", name, err)
	}
	ca, err := open()
	if err != nil {
		return zero, err
	}
	data, err := snapshot(dir)
	if err != nil {
		return zero, err
	}
	_, err = secrets.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/part-of": "palisade"}},
		Type:       corev1.SecretTypeOpaque,
		Data:       data,
	}, metav1.CreateOptions{})
	if !apierrors.IsAlreadyExists(err) {
		if err != nil {
			return zero, fmt.Errorf("storing the CA in Secret %s: %w", name, err)
		}
		return ca, nil
	}
	// Another replica stored its CA first: use that one.
	if secret, err = secrets.Get(ctx, name, metav1.GetOptions{}); err != nil {
		return zero, fmt.Errorf("reading the CA Secret %s: %w", name, err)
	}
	if err := restore(dir, secret); err != nil {
		return zero, err
	}
	return open()
}

// snapshot reads the files of dir as Secret data.
func snapshot(dir string) (map[string][]byte, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading the CA state: %w", err)
	}
	data := map[string][]byte{}
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("reading the CA state: %w", err)
		}
		data[e.Name()] = b
	}
	if len(data) == 0 {
		return nil, errors.New("the CA wrote no state to share")
	}
	return data, nil
}

// restore replaces the files of dir with the Secret's. The names come from the
// Secret, which anyone allowed to write it controls: only plain file names pass.
func restore(dir string, secret *corev1.Secret) error {
	if len(secret.Data) == 0 || len(secret.Data) > maxStateFiles {
		return fmt.Errorf("CA Secret %s holds %d files; it is not a CA state", secret.Name, len(secret.Data))
	}
	for name := range secret.Data {
		if name != filepath.Base(name) || strings.HasPrefix(name, ".") {
			return fmt.Errorf("CA Secret %s: %q is not a CA state file name", secret.Name, name)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("replacing the local CA state: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for name, b := range secret.Data {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return fmt.Errorf("writing the CA state: %w", err)
		}
	}
	return nil
}
