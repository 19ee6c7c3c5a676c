// Package gendocs renders a urfave/cli App's man page and its bash and
// zsh completion scripts. The tests of cmd/ferry and cmd/ferryd compare
// what it renders with the files checked in (docs/man, dist/completion);
// `make man` rewrites them.
package gendocs

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/urfave/cli/v2"
)

// Man returns app's man page in section (1 for ferry, 8 for ferryd), as
// urfave/cli renders it.
func Man(app *cli.App, section int) (string, error) {
	man, err := app.ToManWithSection(section)
	if err != nil {
		return "", fmt.Errorf("rendering the man page of %s: %w", app.Name, err)
	}
	return man, nil
}

// option is one flag as the completions see it.
type option struct {
	names      []string // "--name", "-n"
	value      string   // placeholder of the value it takes; "" for a switch
	usage      string   // first clause of its help text
	repeatable bool
}

// options returns the visible flags of a command (or the app, with
// global true), with the --help (and --version) urfave/cli adds.
func options(flags []cli.Flag, global bool) []option {
	var out []option
	for _, f := range flags {
		df, ok := f.(cli.DocGenerationFlag)
		if !ok {
			continue
		}
		if vf, ok := f.(cli.VisibleFlag); ok && !vf.IsVisible() {
			continue
		}
		o := option{}
		for _, n := range f.Names() {
			if len(n) == 1 {
				o.names = append(o.names, "-"+n)
			} else {
				o.names = append(o.names, "--"+n)
			}
		}
		placeholder, usage := unquoteUsage(df.GetUsage())
		o.usage = firstClause(usage)
		if df.TakesValue() {
			o.value = placeholder
			if o.value == "" {
				o.value = "value"
			}
		}
		switch f.(type) {
		case *cli.StringSliceFlag, *cli.IntSliceFlag, *cli.Int64SliceFlag:
			o.repeatable = true
		}
		out = append(out, o)
	}
	out = append(out, option{names: []string{"--help", "-h"}, usage: "show help"})
	if global {
		out = append(out, option{names: []string{"--version", "-v"}, usage: "print the version"})
	}
	return out
}

// unquoteUsage returns the placeholder a flag's usage names in backticks
// and the usage without them, as urfave/cli's help does.
func unquoteUsage(usage string) (placeholder, text string) {
	before, rest, ok := strings.Cut(usage, "`")
	if !ok {
		return "", usage
	}
	name, after, ok := strings.Cut(rest, "`")
	if !ok {
		return "", usage
	}
	return name, before + name + after
}

// firstClause shortens a flag's help text for a completion menu: no
// parenthesized remarks, nothing after the first "; ".
func firstClause(s string) string {
	var b strings.Builder
	depth := 0
	for _, r := range s {
		switch {
		case r == '(':
			depth++
		case r == ')' && depth > 0:
			depth--
		case depth == 0:
			b.WriteRune(r)
		}
	}
	s = strings.Join(strings.Fields(b.String()), " ")
	s, _, _ = strings.Cut(s, "; ")
	return strings.TrimRight(s, ",;: ")
}

func visibleCommands(app *cli.App) []*cli.Command {
	var out []*cli.Command
	for _, c := range app.Commands {
		if !c.Hidden {
			out = append(out, c)
		}
	}
	return out
}

// Bash returns a bash completion script for app: its commands and their
// subcommands (one level: `ferryd partials purge`, `ferryd token add`),
// and the flags of the command being typed; other words complete as
// files.
func Bash(app *cli.App) string {
	var b strings.Builder
	fn := "_" + strings.ReplaceAll(app.Name, "-", "_")
	fmt.Fprintf(&b, "# bash completion for %s. Generated from its flags by `make man`; do not edit.\n", app.Name)
	fmt.Fprintf(&b, "# Install: copy to /usr/share/bash-completion/completions/%s, or source it.\n", app.Name)
	fmt.Fprintf(&b, "%s() {\n", fn)
	cmds := visibleCommands(app)
	if len(cmds) == 0 {
		b.WriteString("\tlocal cur=${COMP_WORDS[COMP_CWORD]}\n")
		fmt.Fprintf(&b, "\tlocal flags='%s'\n", flagWords(options(app.Flags, true)))
		b.WriteString("\tif [[ $cur == -* ]]; then\n\t\tCOMPREPLY=($(compgen -W \"$flags\" -- \"$cur\"))\n\tfi\n")
	} else {
		var names, pairs []string
		for _, c := range cmds {
			names = append(names, c.Names()...)
			for _, sc := range visibleSubcommands(c) {
				for _, cn := range c.Names() {
					for _, sn := range sc.Names() {
						pairs = append(pairs, cn+"/"+sn)
					}
				}
			}
		}
		b.WriteString("\tlocal cur=${COMP_WORDS[COMP_CWORD]} cmd= sub= i\n")
		b.WriteString("\tfor ((i = 1; i < COMP_CWORD; i++)); do\n")
		fmt.Fprintf(&b, "\t\tif [[ -z $cmd ]]; then\n\t\t\tcase ${COMP_WORDS[i]} in %s) cmd=${COMP_WORDS[i]} ;; esac\n", strings.Join(names, "|"))
		if len(pairs) > 0 {
			fmt.Fprintf(&b, "\t\telif [[ -z $sub ]]; then\n\t\t\tcase $cmd/${COMP_WORDS[i]} in %s) sub=${COMP_WORDS[i]} ;; esac\n", strings.Join(pairs, "|"))
		}
		b.WriteString("\t\tfi\n\tdone\n")
		b.WriteString("\tlocal flags= words=\n\tcase $cmd/$sub in\n")
		for _, c := range cmds {
			for _, sc := range visibleSubcommands(c) {
				var pats []string
				for _, cn := range c.Names() {
					for _, sn := range sc.Names() {
						pats = append(pats, cn+"/"+sn)
					}
				}
				fmt.Fprintf(&b, "\t%s) flags='%s' ;;\n", strings.Join(pats, "|"), flagWords(options(sc.Flags, false)))
			}
			var pats []string
			for _, cn := range c.Names() {
				pats = append(pats, cn+"/")
			}
			var subs []string
			for _, sc := range visibleSubcommands(c) {
				subs = append(subs, sc.Names()...)
			}
			fmt.Fprintf(&b, "\t%s) flags='%s' words='%s' ;;\n", strings.Join(pats, "|"), flagWords(options(c.Flags, false)), strings.Join(subs, " "))
		}
		fmt.Fprintf(&b, "\t*) flags='%s' words='%s help' ;;\n\tesac\n", flagWords(options(app.Flags, true)), strings.Join(names, " "))
		b.WriteString("\tif [[ $cur == -* ]]; then\n\t\tCOMPREPLY=($(compgen -W \"$flags\" -- \"$cur\"))\n")
		b.WriteString("\telif [[ -n $words ]]; then\n\t\tCOMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n\tfi\n")
	}
	b.WriteString("}\n")
	fmt.Fprintf(&b, "complete -o default -o bashdefault -F %s %s\n", fn, app.Name)
	return b.String()
}

// visibleSubcommands returns c's subcommands that are not hidden.
func visibleSubcommands(c *cli.Command) []*cli.Command {
	var out []*cli.Command
	for _, sc := range c.Subcommands {
		if !sc.Hidden && sc.Name != "help" {
			out = append(out, sc)
		}
	}
	return out
}

func flagWords(opts []option) string {
	var w []string
	for _, o := range opts {
		for _, n := range o.names {
			if strings.HasPrefix(n, "--") {
				w = append(w, n)
			}
		}
	}
	return strings.Join(w, " ")
}

// Zsh returns a zsh completion script (#compdef) for app: commands and
// their subcommands (one level) with their descriptions, flags with
// theirs, and files for arguments.
func Zsh(app *cli.App) string {
	var b strings.Builder
	fn := "_" + strings.ReplaceAll(app.Name, "-", "_")
	fmt.Fprintf(&b, "#compdef %s\n", app.Name)
	fmt.Fprintf(&b, "# zsh completion for %s. Generated from its flags by `make man`; do not edit.\n", app.Name)
	fmt.Fprintf(&b, "# Install: copy as %s into a directory of $fpath.\n", fn)
	fmt.Fprintf(&b, "%s() {\n", fn)
	cmds := visibleCommands(app)
	if len(cmds) == 0 {
		b.WriteString("\t_arguments -s \\\n")
		writeSpecs(&b, options(app.Flags, true), "\t\t")
		b.WriteString("\n}\n")
	} else {
		b.WriteString("\tlocal curcontext=$curcontext state line\n\tlocal -a commands\n\tcommands=(\n")
		for _, c := range cmds {
			fmt.Fprintf(&b, "\t\t%s\n", quote(c.Name+":"+c.Usage))
		}
		b.WriteString("\t)\n\t_arguments -C \\\n")
		for _, s := range specs(options(app.Flags, true)) {
			fmt.Fprintf(&b, "\t\t%s \\\n", s)
		}
		b.WriteString("\t\t'1: :->command' \\\n\t\t'*:: :->args'\n")
		b.WriteString("\tcase $state in\n\tcommand)\n")
		fmt.Fprintf(&b, "\t\t_describe -t commands '%s command' commands ;;\n\targs)\n\t\tcase $line[1] in\n", app.Name)
		for _, c := range cmds {
			fmt.Fprintf(&b, "\t\t%s)\n", strings.Join(c.Names(), "|"))
			subs := visibleSubcommands(c)
			if len(subs) == 0 {
				b.WriteString("\t\t\t_arguments -s \\\n")
				writeSpecs(&b, options(c.Flags, false), "\t\t\t\t")
				b.WriteString(" \\\n\t\t\t\t'*:file:_files' ;;\n")
				continue
			}
			// One level of subcommands, in the same pattern.
			b.WriteString("\t\t\tlocal -a subcommands\n\t\t\tsubcommands=(\n")
			for _, sc := range subs {
				fmt.Fprintf(&b, "\t\t\t\t%s\n", quote(sc.Name+":"+sc.Usage))
			}
			b.WriteString("\t\t\t)\n\t\t\t_arguments -C \\\n")
			for _, sp := range specs(options(c.Flags, false)) {
				fmt.Fprintf(&b, "\t\t\t\t%s \\\n", sp)
			}
			b.WriteString("\t\t\t\t'1: :->subcommand' \\\n\t\t\t\t'*:: :->subargs'\n")
			fmt.Fprintf(&b, "\t\t\tcase $state in\n\t\t\tsubcommand)\n\t\t\t\t_describe -t commands '%s %s command' subcommands ;;\n", app.Name, c.Name)
			b.WriteString("\t\t\tsubargs)\n\t\t\t\tcase $line[1] in\n")
			for _, sc := range subs {
				fmt.Fprintf(&b, "\t\t\t\t%s)\n\t\t\t\t\t_arguments -s \\\n", strings.Join(sc.Names(), "|"))
				writeSpecs(&b, options(sc.Flags, false), "\t\t\t\t\t\t")
				b.WriteString(" \\\n\t\t\t\t\t\t'*:file:_files' ;;\n")
			}
			b.WriteString("\t\t\t\tesac ;;\n\t\t\tesac ;;\n")
		}
		b.WriteString("\t\tesac ;;\n\tesac\n}\n")
	}
	fmt.Fprintf(&b, "\n%s \"$@\"\n", fn)
	return b.String()
}

func writeSpecs(b *strings.Builder, opts []option, indent string) {
	for i, s := range specs(opts) {
		if i > 0 {
			b.WriteString(" \\\n")
		}
		b.WriteString(indent + s)
	}
}

// specs returns one _arguments spec per option, quoted for the shell.
func specs(opts []option) []string {
	var out []string
	for _, o := range opts {
		desc := "[" + escapeDesc(o.usage) + "]"
		action := ""
		if o.value != "" {
			action = ":" + escapeMessage(o.value) + ": " // no completion of values
		}
		for _, n := range o.names {
			spec := n
			if o.value != "" && strings.HasPrefix(n, "--") {
				spec += "="
			}
			spec += desc + action
			if len(o.names) > 1 {
				spec = "(" + strings.Join(o.names, " ") + ")" + spec
			}
			if o.repeatable {
				spec = "*" + spec
			}
			out = append(out, quote(spec))
		}
	}
	return out
}

// escapeDesc makes s safe in an _arguments description: a bracket
// would end it.
func escapeDesc(s string) string {
	return strings.NewReplacer("[", "(", "]", ")", `\`, "/").Replace(s)
}

// escapeMessage makes s safe in an _arguments message, which a colon
// would end.
func escapeMessage(s string) string {
	return strings.NewReplacer(":", " ", `\`, "/").Replace(s)
}

// quote single-quotes s for the shell.
func quote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Stale returns the files, by path under root, whose content on disk
// differs from want (or that are missing). With update it writes them
// instead, and returns what it could not write.
func Stale(root string, want map[string]string, update bool) ([]string, error) {
	var stale []string
	for _, path := range slices.Sorted(maps.Keys(want)) {
		full := filepath.Join(root, filepath.FromSlash(path))
		if update {
			if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
				return stale, err
			}
			if err := os.WriteFile(full, []byte(want[path]), 0o644); err != nil {
				return stale, err
			}
			continue
		}
		got, err := os.ReadFile(full)
		if err != nil || string(got) != want[path] {
			stale = append(stale, path)
		}
	}
	return stale, nil
}
