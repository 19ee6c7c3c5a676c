// Command ferryd receives files sent with `ferry send`, verifies every
// chunk with BLAKE3, keeps partial uploads durably and resumes them.
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(run(context.Background(), os.Args, os.Stdout, os.Stderr))
}
