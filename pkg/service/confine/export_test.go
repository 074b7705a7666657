package confine

// SetFallback makes every open take the path used where openat2 is
// missing, for the tests of that path; it returns a function that undoes
// it.
func SetFallback(on bool) func() {
	old := forceFallback
	forceFallback = on
	return func() { forceFallback = old }
}
