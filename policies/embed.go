// Package policies embeds the Rego library shipped with the mesh, so that palisaded,
// palisade-agent and palisadectl evaluate the very files `opa test policies/` tests.
package policies

import (
	"embed"
	"io/fs"
	"strings"
)

//go:embed mesh/*.rego
var files embed.FS

// Library returns the mesh library's modules by path (mesh/x.rego), tests excluded.
func Library() map[string]string {
	modules := map[string]string{}
	err := fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasSuffix(path, "_test.rego") {
			return err
		}
		data, err := files.ReadFile(path)
		modules[path] = string(data)
		return err
	})
	if err != nil {
		panic(err) // the embedded tree cannot fail to read
	}
	return modules
}
