package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferry-dev/ferry/daemon"
)

// purgeTimeout is how long `ferryd partials purge` waits for a running
// daemon to carry out its request.
const purgeTimeout = 10 * time.Second

// partialsCommand is `ferryd partials` (list) and `ferryd partials purge`.
func partialsCommand(stdout io.Writer, st *runState) *cli.Command {
	rootFlag := &cli.StringFlag{Name: "root", Value: "./ferry-inbox", EnvVars: []string{"FERRY_ROOT"},
		Usage: "directory `DIR` ferryd receives into"}
	cmd := &cli.Command{
		Name:      "partials",
		Usage:     "list the partials (interrupted transfers) kept under the root",
		UsageText: "ferryd partials [--root DIR] [--json]\nferryd partials purge [--root DIR] [--older-than D] [NAME...]",
		Description: "Lists each partial: its destination name, token, declared size, durable offset, age (time since " +
			"it was last written) and the last sender's address (- when unknown). It only reads, so it works while " +
			"ferryd runs.",
		Flags: []cli.Flag{rootFlag,
			&cli.BoolFlag{Name: "json", Usage: "print one JSON array of partials instead of a table"}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				st.code = exitUsage
				return fmt.Errorf("unexpected argument %q (did you mean ferryd partials purge?)", c.Args().First())
			}
			fsys, err := openRootReadOnly(c.String("root"))
			if err != nil {
				return err
			}
			defer fsys.Close() //nolint:errcheck // a directory handle
			parts, err := daemon.ListPartials(fsys)
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return printJSON(stdout, parts, time.Now())
			}
			return printTable(stdout, parts, time.Now())
		},
		Subcommands: []*cli.Command{{
			Name:      "purge",
			Usage:     "remove partials: those named (destination name or key), or all; never one a session is using",
			UsageText: "ferryd partials purge [--root DIR] [--older-than D] [NAME...]",
			Description: "Without a running ferryd, purge takes the root's lock and removes the partials itself. " +
				"With ferryd running on the root, it asks ferryd to remove them and waits up to 10s for its answer. " +
				"It prints one line per partial removed or kept.",
			Flags: []cli.Flag{rootFlag,
				&cli.DurationFlag{Name: "older-than", Usage: "remove only partials untouched for at least `D` (e.g. 48h)"}},
			Action: func(c *cli.Context) error {
				return purge(c, stdout, st)
			},
		}},
	}
	usage := func(_ *cli.Context, err error, _ bool) error {
		st.code = exitUsage
		return err
	}
	cmd.OnUsageError = usage
	cmd.Subcommands[0].OnUsageError = usage
	return cmd
}

// openRootReadOnly opens an existing root; unlike the daemon it creates
// nothing.
func openRootReadOnly(root string) (*daemon.OSFS, error) {
	if _, err := os.Stat(root); err != nil {
		return nil, fmt.Errorf("opening root: %w", err)
	}
	fsys, err := daemon.OpenOSFS(root)
	if err != nil {
		return nil, fmt.Errorf("opening root: %w", err)
	}
	return fsys, nil
}

func purge(c *cli.Context, stdout io.Writer, st *runState) error {
	if c.Duration("older-than") < 0 {
		st.code = exitUsage
		return fmt.Errorf("--older-than %v: want a duration of 0 or more", c.Duration("older-than"))
	}
	req := daemon.PurgeRequest{Names: c.Args().Slice(), OlderThan: c.Duration("older-than")}
	fsys, err := openRootReadOnly(c.String("root"))
	if err != nil {
		return err
	}
	defer fsys.Close() //nolint:errcheck // a directory handle
	var res daemon.PurgeResult
	lock, err := daemon.LockRoot(fsys)
	switch {
	case err == nil:
		// No daemon: holding the lock, nothing else uses a partial.
		defer lock.Close() //nolint:errcheck // released on exit either way
		store, err := daemon.NewDirStore(fsys)
		if err != nil {
			return fmt.Errorf("opening root: %w", err)
		}
		res = daemon.Purge(store, req, time.Now(), nil, nil)
	case errors.Is(err, daemon.ErrRootLocked):
		res, err = daemon.RequestPurge(fsys, req, purgeTimeout)
		if err != nil {
			return fmt.Errorf("ferryd is running on %s; purge not done: %w", fsys.Name(), err)
		}
	default:
		return err
	}
	for _, p := range res.Removed {
		fmt.Fprintf(stdout, "removed %s (%d of %d bytes durable)\n", displayName(p), p.DurableOffset, p.Size)
	}
	for _, p := range res.InUse {
		fmt.Fprintf(stdout, "kept %s: a transfer is using it\n", displayName(p))
	}
	for _, n := range res.NotFound {
		fmt.Fprintf(stdout, "no partial %s\n", n)
	}
	if len(res.Errors) > 0 {
		return fmt.Errorf("purging partials: %s", strings.Join(res.Errors, "; "))
	}
	return nil
}

// displayName is a partial's destination name, or its key when it has no
// state record.
func displayName(p daemon.PartialInfo) string {
	if p.Name == "" {
		return "key " + p.Key
	}
	return p.Name
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printTable(w io.Writer, parts []daemon.PartialInfo, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tTOKEN\tSIZE\tDURABLE\tAGE\tREMOTE\tKEY")
	for _, p := range parts {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\n", orDash(p.Name), orDash(p.Token), p.Size, p.DurableOffset,
			now.Sub(p.Modified).Round(time.Second), orDash(p.Remote), p.Key)
	}
	return tw.Flush()
}

// partialJSON is one partial in `ferryd partials --json`.
type partialJSON struct {
	daemon.PartialInfo
	AgeSeconds float64 `json:"age_seconds"`
}

func printJSON(w io.Writer, parts []daemon.PartialInfo, now time.Time) error {
	out := make([]partialJSON, 0, len(parts))
	for _, p := range parts {
		out = append(out, partialJSON{p, now.Sub(p.Modified).Seconds()})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
