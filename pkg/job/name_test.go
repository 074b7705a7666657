package job_test

import (
	"regexp"
	"strings"
	"testing"

	"github.com/memvisor/memvisor/pkg/job"
)

func TestValidName(t *testing.T) {
	tests := []struct {
		name   string
		s      string
		maxLen int
		want   bool
	}{
		{"one letter", "a", 128, true},
		{"one digit", "7", 128, true},
		{"punctuation after the first", "job-1.a_b", 128, true},
		{"at the limit", strings.Repeat("a", 128), 128, true},
		{"over the limit", strings.Repeat("a", 129), 128, false},
		{"node limit", strings.Repeat("a", 63), 63, true},
		{"over the node limit", strings.Repeat("a", 64), 63, false},
		{"empty", "", 128, false},
		{"leading dot", ".a", 128, false},
		{"leading dash", "-a", 128, false},
		{"leading underscore", "_a", 128, false},
		{"dot dot", "..", 128, false},
		{"slash", "a/b", 128, false},
		{"space", "a b", 128, false},
		{"newline at the end", "a\n", 128, false},
		{"non-ASCII letter", "jöb", 128, false},
		{"NUL", "a\x00", 128, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := job.ValidName(tt.s, tt.maxLen); got != tt.want {
				t.Errorf("ValidName(%q, %d) = %v, want %v", tt.s, tt.maxLen, got, tt.want)
			}
		})
	}
}

// FuzzValidName checks ValidName against the regular expression it
// replaced, which states the rule.
func FuzzValidName(f *testing.F) {
	rule := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	for _, s := range []string{"a", "demo", "a.b-c_d", ".a", "a/b", "a\n", strings.Repeat("x", 128), strings.Repeat("x", 129), "ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := job.ValidName(s, 128), rule.MatchString(s); got != want {
			t.Errorf("ValidName(%q, 128) = %v, want %v", s, got, want)
		}
	})
}
