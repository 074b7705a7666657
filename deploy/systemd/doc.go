// Package systemd holds the systemd unit of `serve` (memvisor.service) and
// the drop-in that makes it a node of a fleet
// (memvisor.service.d/fleet.conf), with a test that verifies both with
// systemd-analyze. The package has no code of its own.
package systemd
