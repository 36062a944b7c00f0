package main

import "testing"

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"250MiB": 250 << 20, "1GiB": 1 << 30, "300MB": 300e6, "4096": 4096, "64KiB": 64 << 10, "10B": 10} {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1MiB", "0", "12XB", "1.5GiB"} {
		if got, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) = %d, want an error", in, got)
		}
	}
}
