package podio

import (
	"strings"
)

// pendingSuffix marks an item whose create is made but whose comments
// are not all copied yet. It is removed (PUT external_id) once they are,
// so that a scan after a kill can tell which items to finish.
const pendingSuffix = ".pending"

// legacyPrefix is the external_id prefix of the items the original
// migration tool created: "migrated-<source item id>".
const legacyPrefix = "migrated-"

// extFormat writes and recognizes the external ids of migrated items.
type extFormat struct {
	prefix, suffix string
}

func newExtFormat(f string) extFormat {
	if f == "" {
		f = "{id}"
	}
	p, s, _ := strings.Cut(f, "{id}")
	return extFormat{prefix: p, suffix: s}
}

// format is the external_id written for source item src.
func (e extFormat) format(src string) string { return e.prefix + src + e.suffix }

// candidates are the external ids under which source item src may be
// found: the written form first, then the bare id and the original
// tool's form, then the written form of an unfinished create.
func (e extFormat) candidates(src string) []string {
	out := []string{e.format(src)}
	for _, c := range []string{src, legacyPrefix + src} {
		if c != out[0] {
			out = append(out, c)
		}
	}
	return append(out, e.format(src)+pendingSuffix)
}

// parse recognizes an external id as one of a migrated item: the
// written form, the bare id or the original tool's form, each perhaps
// unfinished. It returns the source item id.
func (e extFormat) parse(ext string) (src string, pending, ok bool) {
	if s, cut := strings.CutSuffix(ext, pendingSuffix); cut {
		ext, pending = s, true
	}
	try := func(p, s string) (string, bool) {
		if !strings.HasPrefix(ext, p) || !strings.HasSuffix(ext, s) || len(ext) <= len(p)+len(s) {
			return "", false
		}
		mid := ext[len(p) : len(ext)-len(s)]
		return mid, digits(mid)
	}
	for _, f := range []extFormat{e, {}, {prefix: legacyPrefix}} {
		if id, ok := try(f.prefix, f.suffix); ok {
			return id, pending, true
		}
	}
	return "", false, false
}

func digits(s string) bool {
	if s == "" || len(s) > 19 {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
