// Package layers holds a test that enforces the import arrows of
// DESIGN.md: transfer depends on the standard library and BLAKE3 only,
// daemon never on the CLIs or UI libraries, integration on no ferry
// package. It stands in for restic's depguard rule without needing
// golangci-lint to be installed.
package layers
