package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
)

// version is set by the linker for releases.
var version = "dev"

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	runErr := newApp(ctx, stdin, stdout, stderr).Run(args)
	if runErr == nil {
		return exitOK
	}
	if !errors.Is(runErr, errReported) {
		fmt.Fprintf(stderr, "ferry: %s\n", oneLine(runErr))
	}
	if isFlagError(runErr) {
		return exitUsage
	}
	return exitCode(runErr)
}

// newApp returns ferry's command line; the man page and the shell
// completions are generated from it too (docs_test.go, make man).
func newApp(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:      "ferry",
		Usage:     "send files to a ferryd daemon, verified with BLAKE3 and resumable",
		UsageText: "ferry send --to ADDR [options] PATH...\nferry hash PATH...",
		Description: "ferry send sends files and directory trees to a ferryd daemon, verified with BLAKE3 chunk by chunk " +
			"and as a whole, and resumes an interrupted transfer where the daemon's durable data ends. ferry hash prints " +
			"the hashes b3sum prints. Every option also reads the FERRY_* environment variable shown with it. " +
			"Exit status: 0 every file committed or already there; 1 failed after retries; 2 usage error; " +
			"3 refused by the daemon; 4 integrity failure that retries did not fix; 130 interrupted. " +
			"With several files the most severe wins.",
		Version:   version,
		Reader:    stdin,
		Writer:    stdout,
		ErrWriter: stderr,
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return fmt.Errorf("%w: %v", errUsage, err)
		},
		ExitErrHandler: func(*cli.Context, error) {}, // exit codes are ours (urfave/cli#610)
		Commands: []*cli.Command{
			sendCommand(ctx, stdout, stderr),
			hashCommand(stdout),
		},
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return fmt.Errorf("%w: a command is required: send or hash (see ferry --help)", errUsage)
			}
			return fmt.Errorf("%w: unknown command %q (see ferry --help)", errUsage, c.Args().First())
		},
	}
	// urfave/cli prints "Incorrect Usage" and help on the app's Writer
	// (stdout) unless each command handles its own usage errors; stdout
	// carries results only, so the one-line error goes to stderr instead.
	for _, cmd := range app.Commands {
		cmd.OnUsageError = app.OnUsageError
	}
	return app
}

// errReported wraps an error whose lines were already printed.
var errReported = errors.New("reported")

// isFlagError recognises urfave/cli's errors about flags that do not go
// through OnUsageError (urfave/cli#610).
func isFlagError(err error) bool {
	msg := err.Error()
	for _, p := range []string{"flag provided but not defined", "invalid value", "Required flag", "flag needs an argument"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// oneLine returns an error message as one line safe for a terminal: it
// may carry text from the daemon or a local file name, so control
// characters are escaped (escapeRemote), never printed raw (issue 8).
func oneLine(err error) string {
	return escapeRemote(err.Error())
}
