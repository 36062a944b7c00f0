# Istio's string matching, as AuthorizationPolicy fields use it (principals,
# namespaces, hosts, paths, header and claim values, ...).
package palisade.mesh.match

# matches(pattern, value) is true when value matches the pattern: exactly, or by
# prefix ("abc*"), by suffix ("*abc"), or by presence ("*" matches any value that
# is not empty).
matches(pattern, value) if pattern == value

matches("*", value) if value != ""

matches(pattern, value) if {
	pattern != "*"
	endswith(pattern, "*")
	startswith(value, trim_suffix(pattern, "*"))
}

matches(pattern, value) if {
	pattern != "*"
	startswith(pattern, "*")
	endswith(value, trim_prefix(pattern, "*"))
}

# any_of(patterns, value) is true when value matches at least one pattern. It is
# matches over the list, written out so that a list costs no call per pattern
# (this runs for every field of every rule): exactly, then by prefix ("*" is the
# prefix "" of any value that is not empty), then by suffix.
any_of(patterns, value) if value in patterns

any_of(patterns, value) if {
	some pattern in patterns
	endswith(pattern, "*")
	startswith(value, trim_suffix(pattern, "*"))
	value != ""
}

any_of(patterns, value) if {
	some pattern in patterns
	startswith(pattern, "*")
	endswith(value, trim_prefix(pattern, "*"))
	value != ""
}

# any_of_fold is any_of ignoring case, as Istio matches hosts.
any_of_fold(patterns, value) if {
	some pattern in patterns
	matches(lower(pattern), lower(value))
}
