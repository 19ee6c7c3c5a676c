// Command ferry sends files to a ferryd daemon, verified with BLAKE3 and
// resumed automatically after any interruption.
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(run(context.Background(), os.Args, os.Stdin, os.Stdout, os.Stderr))
}
