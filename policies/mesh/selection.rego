# Which policies apply to the workload being called (the destination), as Istio
# selects AuthorizationPolicies, RequestAuthentications and (Palisade's) RegoPolicies:
#
#   - a policy in the root namespace without selector applies to the whole mesh;
#   - a policy in the root namespace with a selector applies to the workloads of
#     any namespace whose labels match it;
#   - a policy in the workload's namespace without selector applies to all the
#     namespace's workloads;
#   - a policy in the workload's namespace with a selector applies to the
#     workloads whose labels match it.
#
# So a policy applies when it is in one of those two namespaces and its selector
# (if any) matches. Only the lists of those two namespaces are read, so the cost
# per request does not grow with the policies of other namespaces.
#
# Each result is a list of policies (in namespace, then name order), computed
# once per evaluation. The policy objects carry metadata.namespace (README).
package palisade.mesh.selection

# root is the mesh's root namespace (Istio's meshConfig.rootNamespace).
root := data.palisade.config.root_namespace

# namespace is the namespace of the workload being called: Palisade's ext_authz
# servers put it in input.palisade.workload; a stock OPA-Envoy enforcing Palisade's
# bundle has only the context extensions the xDS configuration sets.
namespace := input.palisade.workload.namespace

namespace := input.attributes.contextExtensions["palisade.workload.namespace"] if not input.palisade

# labels are the called workload's labels ({} when the input has none).
default labels := {}

labels := input.palisade.workload.labels if is_object(input.palisade.workload.labels)

# Without input.palisade, the labels of the context extension "k1=v1,k2=v2".
labels := {k: v |
	some pair in split(input.attributes.contextExtensions["palisade.workload.labels"], ",")
	[k, v] := split(pair, "=")
	k != ""
} if not input.palisade

# namespaces are the namespaces whose policies can apply. A set, so that a workload
# of the root namespace does not see the root namespace's policies twice.
namespaces contains namespace

namespaces contains root

# A policy selects the workload when its spec.selector.matchLabels are a subset of
# the workload's labels; no selector (or an empty one, which the JSON form leaves
# out) selects every workload of the namespaces above. Per policy this is one
# lookup and one built-in, with labels bound once: it runs for every policy of
# the two namespaces.

# authorization_policies is the list of the AuthorizationPolicies that apply.
authorization_policies := [p |
	l := labels
	some ns in namespaces
	some p in data.palisade.config.authorization_policies[ns]
	object.subset(l, object.get(p.spec, ["selector", "matchLabels"], {}))
]

# request_authentications is the list of the RequestAuthentications that apply.
request_authentications := [p |
	l := labels
	some ns in namespaces
	some p in data.palisade.config.request_authentications[ns]
	object.subset(l, object.get(p.spec, ["selector", "matchLabels"], {}))
]

# rego_policies is the list of the RegoPolicies that apply (with or without
# provider: the decision tells them apart).
rego_policies := [p |
	l := labels
	some ns in namespaces
	some p in data.palisade.config.rego_policies[ns]
	object.subset(l, object.get(p.spec, ["selector", "matchLabels"], {}))
]

# id(p) is "NS/NAME", how decisions name a policy.
id(p) := concat("/", [p.metadata.namespace, p.metadata.name])
