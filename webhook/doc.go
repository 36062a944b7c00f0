// Package webhook holds palisaded's Kubernetes admission webhooks and what keeps
// them working:
//
//   - Injector (InjectPath) adds the sidecar to pods as they are created: the
//     traffic capture init container, palisade-agent and Envoy, rendered from a
//     text/template (DefaultTemplate, or a file with LoadTemplate);
//   - Validator (ValidatePath) refuses Istio and Palisade configuration objects
//     that mesh/config does not accept, at kubectl apply;
//   - Server serves both over TLS with a certificate palisaded's CA signs;
//   - KeepCABundle writes that CA's roots into the caBundle of the two webhook
//     configurations and keeps them there.
//
// The webhook configurations (deploy/) select what reaches the handlers, so the
// handlers read nothing from the API server:
//
//   - MutatingWebhookConfiguration palisade-sidecar-injector: pods, CREATE, in
//     namespaces labelled palisade-injection=enabled (namespaceSelector),
//     admissionReviewVersions [v1], sideEffects None, reinvocationPolicy
//     IfNeeded (a reinvocation finds the pod injected and leaves it). With
//     failurePolicy Fail a pod cannot be created in an injected namespace while
//     the injector is unreachable; with Ignore it is created without the sidecar,
//     outside the mesh. Fail is the zero-trust choice; Ignore keeps workloads
//     schedulable through a control plane outage.
//   - ValidatingWebhookConfiguration palisade-validator: the kinds of
//     mesh/config (networking.istio.io, security.istio.io, policy.palisade.dev),
//     CREATE and UPDATE. Ignore suits it: the config sources check every object
//     again and report it in its status.
package webhook
