package palisade.mesh.match_test

import data.palisade.mesh.match

# result turns a match into true or false, so that a table can expect either.
result(pattern, value) if match.matches(pattern, value)

result(pattern, value) := false if not match.matches(pattern, value)

cases := [
	{"name": "exact", "pattern": "/info", "value": "/info", "want": true},
	{"name": "exact, other value", "pattern": "/info", "value": "/infos", "want": false},
	{"name": "exact is case-sensitive", "pattern": "GET", "value": "get", "want": false},
	{"name": "prefix", "pattern": "/info*", "value": "/info/a", "want": true},
	{"name": "prefix matches the bare prefix", "pattern": "/info*", "value": "/info", "want": true},
	{"name": "prefix, other value", "pattern": "/info*", "value": "/inf", "want": false},
	{"name": "suffix", "pattern": "*.example.com", "value": "a.example.com", "want": true},
	{"name": "suffix, other value", "pattern": "*.example.com", "value": "example.com", "want": false},
	{"name": "presence", "pattern": "*", "value": "anything", "want": true},
	{"name": "presence needs a value", "pattern": "*", "value": "", "want": false},
	{"name": "star in the middle is literal", "pattern": "a*b", "value": "axxb", "want": false},
	{"name": "star in the middle, literally", "pattern": "a*b", "value": "a*b", "want": true},
	{"name": "empty pattern matches only empty", "pattern": "", "value": "", "want": true},
	{"name": "empty pattern, a value", "pattern": "", "value": "x", "want": false},
]

test_matches if {
	every c in cases {
		got := result(c.pattern, c.value)
		print_mismatch(c, got)
		got == c.want
	}
}

# print_mismatch prints the case that fails (opa test -v shows it).
print_mismatch(c, got) if {
	got != c.want
	print("case", c.name, "want", c.want, "got", got)
} else := true

# any_of agrees with matches on every case of the table, as a list of one
# pattern and among other patterns.
test_any_of_is_matches if {
	every c in cases {
		got := any_of_result([c.pattern], c.value)
		print_mismatch(c, got)
		got == c.want
		got2 := any_of_result(["/nothing", c.pattern, "nothing*"], c.value)
		print_mismatch(c, got2)
		got2 == c.want
	}
}

any_of_result(patterns, value) if match.any_of(patterns, value)

any_of_result(patterns, value) := false if not match.any_of(patterns, value)

test_any_of if {
	match.any_of(["/a", "/b*"], "/b/c")
	not match.any_of(["/a", "/b*"], "/c")
	not match.any_of([], "/a")
}

test_any_of_fold if {
	match.any_of_fold(["*.Example.com"], "API.example.COM")
	not match.any_of(["*.Example.com"], "API.example.COM")
}
