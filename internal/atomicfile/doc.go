// Package atomicfile replaces a file so that a reader, or a process that
// starts after a crash or a power cut, sees either the old contents or the
// new ones, never a mix: write a temporary file in the same directory,
// fsync it, rename it over the target, and fsync the directory.
package atomicfile
