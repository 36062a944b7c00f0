package main

import (
	"os"
	"path/filepath"
	"testing"
)

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

func TestMemoryLimit(t *testing.T) {
	v2 := t.TempDir()
	writeFile(t, filepath.Join(v2, "sys/fs/cgroup/memory.max"), "1073741824\n")
	v2max := t.TempDir()
	writeFile(t, filepath.Join(v2max, "sys/fs/cgroup/memory.max"), "max\n")
	v1 := t.TempDir()
	writeFile(t, filepath.Join(v1, "sys/fs/cgroup/memory/memory.limit_in_bytes"), "536870912\n")
	v1none := t.TempDir()
	writeFile(t, filepath.Join(v1none, "sys/fs/cgroup/memory/memory.limit_in_bytes"), "9223372036854771712\n")
	bad := t.TempDir()
	writeFile(t, filepath.Join(bad, "sys/fs/cgroup/memory.max"), "lots\n")
	for _, tc := range []struct {
		name, flag, env, root string
		want                  int64
		wantErr               bool
	}{
		{"flag wins", "250MiB", "1GiB", v2, 250 << 20, false},
		{"none", "none", "", v2, 0, false},
		{"GOMEMLIMIT left to the runtime", "", "1GiB", v2, 0, false},
		{"cgroup v2", "", "", v2, 966367641, false},
		{"cgroup v2 without limit", "", "", v2max, 0, false},
		{"cgroup v1", "", "", v1, 483183820, false},
		{"cgroup v1 without limit", "", "", v1none, 0, false},
		{"no cgroup files", "", "", t.TempDir(), 0, false},
		{"unreadable figure", "", "", bad, 0, true},
		{"bad flag", "lots", "", v2, 0, true},
	} {
		got, _, err := memoryLimit(tc.flag, tc.env, tc.root)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("%s: got %d, %v; want %d (error: %v)", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
