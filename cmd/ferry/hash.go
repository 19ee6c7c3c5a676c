package main

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/ferry-dev/ferry/transfer"
)

func hashCommand(stdout io.Writer) *cli.Command {
	return &cli.Command{
		Name:      "hash",
		Usage:     "print BLAKE3 hashes exactly as b3sum does",
		ArgsUsage: "[PATH...] (none or - for standard input)",
		Action: func(c *cli.Context) error {
			paths := c.Args().Slice()
			if len(paths) == 0 {
				paths = []string{"-"}
			}
			var failed error
			for _, p := range paths {
				if err := hashOne(c.App.Reader, stdout, p); err != nil {
					fmt.Fprintf(c.App.ErrWriter, "ferry: %s: %s\n", p, describe(err))
					failed = fmt.Errorf("%w: hashing failed for some files", errReported)
				}
			}
			return failed
		},
	}
}

func hashOne(stdin io.Reader, stdout io.Writer, p string) error {
	r := stdin
	if p != "-" {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close() //nolint:errcheck // opened read-only
		r = f
	}
	h, err := transfer.HashReader(r)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, b3sumLine(hex.EncodeToString(h[:]), p))
	return err
}

// b3sumLine formats a line as b3sum does: a name holding a backslash or a
// newline is escaped and the line starts with a backslash (as in
// coreutils' sha256sum).
func b3sumLine(hash, name string) string {
	if strings.ContainsAny(name, "\\\n\r") {
		name = strings.NewReplacer("\\", "\\\\", "\n", "\\n", "\r", "\\r").Replace(name)
		return "\\" + hash + "  " + name
	}
	return hash + "  " + name
}

// describe phrases an OS error the way b3sum's users read it.
func describe(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	if errors.Is(err, syscall.EISDIR) {
		return "Is a directory"
	}
	return err.Error()
}
