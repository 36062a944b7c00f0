package filesource

import (
	"cmp"
	"errors"
	"fmt"
	"github.com/cespare/xxhash/v2"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/palisade-mesh/palisade/mesh/config"
)

// MaxFileBytes bounds one config file; a larger file is reported, not read, so that
// a runaway file cannot exhaust memory.
const MaxFileBytes = 16 << 20

// Load reads every *.yaml and *.yml file under dir, recursively, and decodes it with
// config.Decode. Hidden files and directories (names starting with ".", such as .git,
// editor swap files and the ..data directories of a Kubernetes ConfigMap volume) are
// skipped; symbolic links are followed, each directory is read once.
//
// Files are read in lexical order of their paths, which are relative to dir and
// slash-separated in config.Source. When two documents define the same object (same
// config.Key), the first one is kept and the others are reported as errors.
//
// Problems with files (unreadable, too large, invalid) are diagnostics; err is set only
// when dir itself cannot be read.
func Load(dir string) (objs []config.Object, diags []config.Diagnostic, err error) {
	sc, err := scan(dir)
	if err != nil {
		return nil, nil, err
	}
	objs, diags = sc.read(nil)
	return objs, diags, nil
}

// scanResult is one walk of a config directory.
type scanResult struct {
	root  string
	files []string // relative to root, slash-separated, sorted
	dirs  []dirInfo
	diags []config.Diagnostic
}

// dirInfo is a directory the walk read: what the watcher must cover.
type dirInfo struct {
	path string      // root joined with the directory's relative path
	info fs.FileInfo // of the directory itself, symbolic links followed
}

// scan walks the directory tree under root without reading any file.
func scan(root string) (*scanResult, error) {
	root = filepath.Clean(root)
	info, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("reading config directory: %w", err)
	}
	if !info.IsDir() {
		return nil, fmt.Errorf("reading config directory: %s is not a directory", root)
	}
	sc := &scanResult{root: root}
	if err := sc.walk("", info, map[string]bool{}); err != nil {
		return nil, fmt.Errorf("reading config directory: %w", err)
	}
	slices.Sort(sc.files)
	return sc, nil
}

// walk reads the directory at rel ("" for the root). visited holds the real paths of
// the directories read so far, so that symbolic links cannot make the walk loop or
// read a directory twice. Only an unreadable root is returned as an error.
func (sc *scanResult) walk(rel string, info fs.FileInfo, visited map[string]bool) error {
	dir := filepath.Join(sc.root, filepath.FromSlash(rel))
	real, err := filepath.EvalSymlinks(dir)
	if err == nil && visited[real] {
		return nil
	}
	var entries []os.DirEntry
	if err == nil {
		visited[real] = true
		entries, err = os.ReadDir(dir)
	}
	if err != nil {
		if rel == "" {
			return err
		}
		// The trailing slash marks a directory: its problem concerns every file in it.
		sc.report(config.SeverityError, rel+"/", "cannot read directory: %v", describe(err))
		return nil
	}
	sc.dirs = append(sc.dirs, dirInfo{path: dir, info: info})
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		childRel := path.Join(rel, name)
		isYAML := hasYAMLExtension(name)
		mode := e.Type()
		if mode.IsRegular() {
			if isYAML {
				sc.files = append(sc.files, childRel)
			}
			continue
		}
		if !mode.IsDir() && mode&fs.ModeSymlink == 0 {
			if isYAML {
				sc.report(config.SeverityWarning, childRel, "not a regular file; skipped")
			}
			continue
		}
		// A directory or a symbolic link: find out what it leads to.
		target, err := os.Stat(filepath.Join(dir, name))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if isYAML && mode&fs.ModeSymlink != 0 {
				sc.report(config.SeverityWarning, childRel, "symbolic link to a missing file; skipped")
			}
			// Otherwise it was removed since the directory was read.
		case err != nil:
			if isYAML || mode.IsDir() {
				sc.report(config.SeverityError, childRel, "cannot read: %v", describe(err))
			}
		case target.IsDir():
			if err := sc.walk(childRel, target, visited); err != nil {
				return err
			}
		case isYAML && target.Mode().IsRegular():
			sc.files = append(sc.files, childRel)
		case isYAML:
			sc.report(config.SeverityWarning, childRel, "not a regular file; skipped")
		}
	}
	return nil
}

func hasYAMLExtension(name string) bool {
	ext := filepath.Ext(name)
	return ext == ".yaml" || ext == ".yml"
}

func (sc *scanResult) report(sev config.Severity, file, format string, args ...any) {
	sc.diags = append(sc.diags, config.Diagnostic{
		Severity: sev,
		Source:   config.Source{File: file},
		Message:  fmt.Sprintf(format, args...),
	})
}

// decodeCache remembers each file's decoded objects by content, so that a reload
// decodes only the files that changed: with a thousand files, decoding all of them
// is most of the cost of a one-line edit.
type decodeCache map[string]decodedFile

type decodedFile struct {
	sum   uint64
	objs  []config.Object
	diags []config.Diagnostic
}

// decode returns config.Decode(rel, data), from the cache when the content is the
// same. A nil cache decodes every time.
func (c decodeCache) decode(rel string, data []byte) ([]config.Object, []config.Diagnostic) {
	if c == nil {
		return config.Decode(rel, data)
	}
	sum := xxhash.Sum64(data)
	if f, ok := c[rel]; ok && f.sum == sum {
		return f.objs, f.diags
	}
	objs, diags := config.Decode(rel, data)
	c[rel] = decodedFile{sum: sum, objs: objs, diags: diags}
	return objs, diags
}

// prune forgets the files not in files.
func (c decodeCache) prune(files []string) {
	keep := make(map[string]bool, len(files))
	for _, f := range files {
		keep[f] = true
	}
	for rel := range c {
		if !keep[rel] {
			delete(c, rel)
		}
	}
}

// read decodes the scanned files, drops duplicate objects and returns the objects in
// file order with every diagnostic, sorted by file and document.
func (sc *scanResult) read(cache decodeCache) ([]config.Object, []config.Diagnostic) {
	defer cache.prune(sc.files)
	var objs []config.Object
	diags := slices.Clone(sc.diags)
	first := map[config.Key]config.Source{}
	for _, rel := range sc.files {
		data, err := readFile(filepath.Join(sc.root, filepath.FromSlash(rel)))
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue // removed since the scan: the watcher reports that as a change
		case err != nil:
			diags = append(diags, config.Diagnostic{
				Severity: config.SeverityError,
				Source:   config.Source{File: rel},
				Message:  err.Error(),
			})
			continue
		}
		fileObjs, fileDiags := cache.decode(rel, data)
		diags = append(diags, fileDiags...)
		for _, o := range fileObjs {
			if src, dup := first[o.Key]; dup {
				diags = append(diags, config.Diagnostic{
					Severity: config.SeverityError,
					Source:   o.Source,
					Object:   o.Key,
					Message:  fmt.Sprintf("%s is already defined in %s; this definition is ignored", o.Key, src),
				})
				continue
			}
			first[o.Key] = o.Source
			objs = append(objs, o)
		}
	}
	slices.SortStableFunc(diags, func(a, b config.Diagnostic) int {
		return cmp.Or(strings.Compare(a.Source.File, b.Source.File), cmp.Compare(a.Source.Index, b.Source.Index))
	})
	return objs, diags
}

// readFile reads a regular file of at most MaxFileBytes.
func readFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("cannot read file: %w", describe(err))
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot read file: %w", describe(err))
	}
	if info.Size() > MaxFileBytes {
		return nil, fmt.Errorf("file is %d bytes, larger than the %d byte limit; not read", info.Size(), MaxFileBytes)
	}
	// The file may grow while it is read: read one byte past the limit to notice.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read file: %w", describe(err))
	}
	if len(data) > MaxFileBytes {
		return nil, fmt.Errorf("file is larger than the %d byte limit; not read", MaxFileBytes)
	}
	return data, nil
}

// describe drops the path from a file system error: diagnostics name the file
// already, relative to the config directory.
func describe(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
