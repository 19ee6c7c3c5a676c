package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferry-dev/ferry/daemon"
	"github.com/ferry-dev/ferry/daemon/auth"
	"github.com/ferry-dev/ferry/internal/sizeflag"
)

// tokensFlag is --tokens, shared by the daemon and `ferryd token`.
func tokensFlag() *cli.StringFlag {
	return &cli.StringFlag{Name: "tokens", EnvVars: []string{"FERRY_TOKENS"},
		Usage: "token `FILE` senders authenticate against (default ROOT/.ferry/tokens); must not be readable or writable by group or others"}
}

// tokenFile is the token file: --tokens, else ROOT/.ferry/tokens.
func tokenFile(c *cli.Context, root string) string {
	if f := c.String("tokens"); f != "" {
		return f
	}
	if root == "" {
		return "" // --store without --tokens: no token file
	}
	return filepath.Join(root, ".ferry", "tokens")
}

// tokenCommand is `ferryd token add|list|revoke`.
func tokenCommand(stdout, stderr io.Writer, st *runState) *cli.Command {
	common := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "root", Value: "./ferry-inbox", EnvVars: []string{"FERRY_ROOT"},
				Usage: "directory `DIR` ferryd receives into (its token file and usage live under it)"},
			tokensFlag(),
		}
	}
	usage := func(_ *cli.Context, err error, _ bool) error {
		st.code = exitUsage
		return err
	}
	cmd := &cli.Command{
		Name:  "token",
		Usage: "add, list or revoke the tokens senders authenticate with",
		UsageText: "ferryd token add NAME [--dest PREFIX] [--max-size SIZE] [--quota SIZE] [--overwrite]\n" +
			"ferryd token list [--json]\nferryd token revoke NAME",
		Description: "The token file keeps only SHA-256 hashes of the secrets, with each token's permissions. " +
			"A running ferryd notices a change within a second; a revoked token's sessions end at once.",
		OnUsageError: usage,
		Subcommands: []*cli.Command{{
			Name:      "add",
			Usage:     "create a token and print its secret, alone on stdout, once",
			UsageText: "ferryd token add NAME [--root DIR] [--tokens FILE] [--dest PREFIX] [--max-size SIZE] [--quota SIZE] [--overwrite]",
			Description: "NAME is letters, digits, '.', '_' and '-'. The secret is stored nowhere: give it to the sender " +
				"(ferry send --token-file FILE). --dest confines the token to ROOT/PREFIX: the sender's --dest is relative to it.",
			Flags: append(common(),
				&cli.StringFlag{Name: "dest", Usage: "confine the token to `PREFIX` under the root (e.g. hosts/web1)"},
				&cli.GenericFlag{Name: "max-size", Value: sizeflag.New(0), Usage: "refuse files larger than `SIZE` from this token (0: no limit)"},
				&cli.GenericFlag{Name: "quota", Value: sizeflag.New(0), Usage: "refuse offers once the token's committed files and partials would exceed `SIZE`; a file replaced with --update counts only what it adds (0: no quota)"},
				&cli.BoolFlag{Name: "overwrite", Usage: "let the token replace committed files (ferry send --update)"}),
			OnUsageError: usage,
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					st.code = exitUsage
					return errors.New("ferryd token add takes one NAME")
				}
				t := auth.Token{Name: c.Args().First(), Dest: strings.TrimSuffix(c.String("dest"), "/"),
					MaxSize: sizeflag.Get(c, "max-size"), Quota: sizeflag.Get(c, "quota"), Overwrite: c.Bool("overwrite")}
				if err := auth.CheckName(t.Name); err != nil {
					st.code = exitUsage
					return err
				}
				if err := auth.CheckDest(t.Dest); err != nil {
					st.code = exitUsage
					return fmt.Errorf("--dest: %w", err)
				}
				file := tokenFile(c, c.String("root"))
				secret, err := auth.Add(file, t, time.Now())
				if err != nil {
					return err
				}
				fmt.Fprintln(stdout, secret)
				fmt.Fprintf(stderr, "ferryd: token %s added to %s; a running ferryd takes it within a second. "+
					"The secret above is shown once: give it to the sender (ferry send --token-file FILE).\n", t.Name, file)
				return nil
			},
		}, {
			Name:         "list",
			Usage:        "list the tokens: name, prefix, limits, creation and last use (never secrets)",
			UsageText:    "ferryd token list [--root DIR] [--tokens FILE] [--json]",
			Flags:        append(common(), &cli.BoolFlag{Name: "json", Usage: "print one JSON array instead of a table"}),
			OnUsageError: usage,
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					st.code = exitUsage
					return fmt.Errorf("unexpected argument %q", c.Args().First())
				}
				return listTokens(c, stdout)
			},
		}, {
			Name:         "revoke",
			Usage:        "remove a token; a running ferryd ends its sessions within a second (their verified data stays as partials)",
			UsageText:    "ferryd token revoke NAME [--root DIR] [--tokens FILE]",
			Flags:        common(),
			OnUsageError: usage,
			Action: func(c *cli.Context) error {
				if c.NArg() != 1 {
					st.code = exitUsage
					return errors.New("ferryd token revoke takes one NAME")
				}
				file := tokenFile(c, c.String("root"))
				if err := auth.Revoke(file, c.Args().First()); err != nil {
					return err
				}
				fmt.Fprintf(stderr, "ferryd: token %s revoked in %s\n", c.Args().First(), file)
				return nil
			},
		}},
	}
	return cmd
}

// tokenJSON is one token in `ferryd token list --json`.
type tokenJSON struct {
	Name           string     `json:"name"`
	ID             string     `json:"id"`
	Dest           string     `json:"dest"`
	MaxSize        int64      `json:"max_size"`
	Quota          int64      `json:"quota"`
	Overwrite      bool       `json:"overwrite"`
	Created        time.Time  `json:"created"`
	LastUsed       *time.Time `json:"last_used"`
	CommittedBytes int64      `json:"committed_bytes"`
}

func listTokens(c *cli.Context, stdout io.Writer) error {
	root := c.String("root")
	tokens, _, err := auth.Load(tokenFile(c, root))
	if err != nil {
		return err
	}
	usage := map[string]auth.Usage{}
	if _, err := os.Stat(root); err == nil {
		fsys, err := daemon.OpenOSFS(root)
		if err != nil {
			return fmt.Errorf("opening root: %w", err)
		}
		defer fsys.Close() //nolint:errcheck // a directory handle
		if usage, err = daemon.ReadTokenUsage(fsys); err != nil {
			return err
		}
	}
	out := make([]tokenJSON, 0, len(tokens))
	for _, t := range tokens {
		u := usage[t.ID()]
		j := tokenJSON{Name: t.Name, ID: t.ID(), Dest: t.Dest, MaxSize: t.MaxSize, Quota: t.Quota, Overwrite: t.Overwrite,
			Created: t.Created, CommittedBytes: u.CommittedBytes}
		if !u.LastUsed.IsZero() {
			j.LastUsed = &u.LastUsed
		}
		out = append(out, j)
	}
	if c.Bool("json") {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	limit := func(n int64) string {
		if n == 0 {
			return "-"
		}
		return sizeflag.Format(n)
	}
	tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tDEST\tMAX_SIZE\tQUOTA\tOVERWRITE\tCOMMITTED\tCREATED\tLAST_USED")
	for _, j := range out {
		last := "never"
		if j.LastUsed != nil {
			last = j.LastUsed.Format(time.RFC3339)
		}
		ow := "no"
		if j.Overwrite {
			ow = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", j.Name, orDash(j.Dest), limit(j.MaxSize), limit(j.Quota), ow,
			sizeflag.Format(j.CommittedBytes), j.Created.Format(time.RFC3339), last)
	}
	return tw.Flush()
}

// permuteTokenArgs moves the NAME of `ferryd token add|revoke NAME
// [flags]` behind its flags, since urfave/cli v2 stops parsing flags at
// the first argument: `ferryd token add backup --dest hosts/web1` then
// reads as written. Other command lines are returned as they are.
func permuteTokenArgs(args []string) []string {
	if len(args) < 4 || args[1] != "token" || args[2] != "add" && args[2] != "revoke" {
		return args
	}
	valued := map[string]bool{"root": true, "tokens": true, "dest": true, "max-size": true, "quota": true}
	var flags, names []string
	rest := args[3:]
	for i := 0; i < len(rest); i++ {
		a := rest[i]
		if a == "--" {
			names = append(names, rest[i+1:]...)
			break
		}
		name, hasValue := strings.CutPrefix(strings.TrimPrefix(a, "-"), "-")
		if !strings.HasPrefix(a, "-") || a == "-" {
			names = append(names, a)
			continue
		}
		if !hasValue {
			name = strings.TrimPrefix(a, "-")
		}
		flags = append(flags, a)
		if valued[name] && !strings.Contains(name, "=") && i+1 < len(rest) {
			flags = append(flags, rest[i+1])
			i++
		}
	}
	out := append(append([]string(nil), args[:3]...), flags...)
	return append(out, names...)
}
