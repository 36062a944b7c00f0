package palisade.mesh.selection_test

import data.palisade.mesh.selection

# policy builds a policy object as palisaded writes it into data.palisade.config.
policy(ns, name, match_labels) := {
	"metadata": {"namespace": ns, "name": name},
	"spec": {"selector": {"matchLabels": match_labels}},
}

# bare(ns, name) is a policy without spec.selector at all.
bare(ns, name) := {"metadata": {"namespace": ns, "name": name}, "spec": {}}

# by_ns groups policies by namespace, the way data.palisade.config holds them.
by_ns(policies) := {ns: [p | some p in policies; p.metadata.namespace == ns] |
	some q in policies
	ns := q.metadata.namespace
}

policies := [
	bare("istio-system", "mesh-wide"),
	policy("istio-system", "root-reviews", {"app": "reviews"}),
	policy("istio-system", "root-ratings", {"app": "ratings"}),
	policy("istio-system", "root-empty-selector", {}),
	bare("default", "ns-wide"),
	policy("default", "reviews", {"app": "reviews"}),
	policy("default", "reviews-v1", {"app": "reviews", "version": "v1"}),
	policy("default", "reviews-v2", {"app": "reviews", "version": "v2"}),
	bare("other", "other-ns-wide"),
	policy("other", "other-reviews", {"app": "reviews"}),
]

config := {
	"root_namespace": "istio-system",
	"authorization_policies": by_ns(policies),
	"request_authentications": by_ns(policies),
	"rego_policies": by_ns(policies),
}

cases := [
	{
		"name": "workload with matching labels: root wide, root selector, namespace wide, namespace selector",
		"workload": {"namespace": "default", "labels": {"app": "reviews", "version": "v1"}},
		"want": {
			"istio-system/mesh-wide", "istio-system/root-reviews", "istio-system/root-empty-selector",
			"default/ns-wide", "default/reviews", "default/reviews-v1",
		},
	},
	{
		"name": "a selector needs every label",
		"workload": {"namespace": "default", "labels": {"version": "v1"}},
		"want": {"istio-system/mesh-wide", "istio-system/root-empty-selector", "default/ns-wide"},
	},
	{
		"name": "workload without labels gets only policies without selector",
		"workload": {"namespace": "default"},
		"want": {"istio-system/mesh-wide", "istio-system/root-empty-selector", "default/ns-wide"},
	},
	{
		"name": "other namespace: its own policies and the root's, not default's",
		"workload": {"namespace": "other", "labels": {"app": "reviews"}},
		"want": {"istio-system/mesh-wide", "istio-system/root-reviews", "istio-system/root-empty-selector", "other/other-ns-wide", "other/other-reviews"},
	},
	{
		"name": "namespace without policies: only the root's",
		"workload": {"namespace": "empty", "labels": {"app": "ratings"}},
		"want": {"istio-system/mesh-wide", "istio-system/root-ratings", "istio-system/root-empty-selector"},
	},
	{
		"name": "workload in the root namespace is not counted twice",
		"workload": {"namespace": "istio-system", "labels": {"app": "ratings"}},
		"want": {"istio-system/mesh-wide", "istio-system/root-ratings", "istio-system/root-empty-selector"},
	},
	{
		"name": "label values must be equal",
		"workload": {"namespace": "default", "labels": {"app": "reviews", "version": "v3"}},
		"want": {
			"istio-system/mesh-wide", "istio-system/root-reviews", "istio-system/root-empty-selector",
			"default/ns-wide", "default/reviews",
		},
	},
]

test_selection if {
	every c in cases {
		inp := {"palisade": {"workload": c.workload}}
		ap := ids(selection.authorization_policies) with input as inp with data.palisade.config as config
		ra := ids(selection.request_authentications) with input as inp with data.palisade.config as config
		rp := ids(selection.rego_policies) with input as inp with data.palisade.config as config
		print_mismatch(c, ap)
		ap == c.want
		ra == c.want
		rp == c.want
	}
}

# ids are "NS/NAME" of the policies; a list without duplicates gives a set of the
# same size.
ids(policies) := s if {
	s := {selection.id(p) | some p in policies}
	count(s) == count(policies)
}

# print_mismatch prints the case that fails (opa test -v shows it).
print_mismatch(c, got) if {
	got != c.want
	print("case", c.name, "want", c.want, "got", got)
} else := true

test_values_are_the_policies if {
	got := selection.authorization_policies with input as {"palisade": {"workload": {"namespace": "other"}}}
		with data.palisade.config as config
	got == [
		bare("istio-system", "mesh-wide"),
		policy("istio-system", "root-empty-selector", {}),
		bare("other", "other-ns-wide"),
	]
}

test_kinds_are_separate if {
	cfg := {
		"root_namespace": "istio-system",
		"authorization_policies": {"default": [bare("default", "ap")]},
		"request_authentications": {"istio-system": [bare("istio-system", "ra")]},
	}
	inp := {"palisade": {"workload": {"namespace": "default"}}}
	selection.authorization_policies == [bare("default", "ap")] with input as inp with data.palisade.config as cfg
	selection.request_authentications == [bare("istio-system", "ra")] with input as inp with data.palisade.config as cfg
	count(selection.rego_policies) == 0 with input as inp with data.palisade.config as cfg
}

# encode gives a workload's labels as the context extension carries them.
encode(labels) := concat(",", [concat("=", [k, labels[k]]) | some k in sort(object.keys(labels))])

# A stock OPA-Envoy has no input.palisade: the same cases, from the context
# extensions.
test_selection_from_context_extensions if {
	every c in cases {
		ext := {"palisade.workload.namespace": c.workload.namespace, "palisade.workload.labels": encode(object.get(c.workload, "labels", {}))}
		inp := {"attributes": {"contextExtensions": ext}}
		ap := ids(selection.authorization_policies) with input as inp with data.palisade.config as config
		print_mismatch(c, ap)
		ap == c.want
	}
}

test_input_palisade_wins_over_context_extensions if {
	inp := {
		"palisade": {"workload": {"namespace": "other"}},
		"attributes": {"contextExtensions": {"palisade.workload.namespace": "default"}},
	}
	selection.namespace == "other" with input as inp
}
