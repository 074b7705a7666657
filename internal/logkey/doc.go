// Package logkey names the fields of memvisor's log lines once, so that a
// field means the same thing in every line that carries it, whichever
// process or package writes it (docs/design.md, "The memory policy").
//
// Memory figures are in MiB, rounded to one decimal (MB); a figure always
// describes the process the line is about: in the supervisor's lines, the
// runner it supervises.
package logkey
