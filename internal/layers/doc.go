// Package layers holds a test that enforces the import arrows of
// DESIGN.md: transfer depends on the standard library and BLAKE3 only,
// daemon never on the CLIs or UI libraries, integration on no ferry
// package but the fault proxy and the S3 gateway harness. depguard (.golangci.yml, make lint) checks the same arrows on
// direct imports; this test also follows transitive ones and runs in
// make test.
package layers
