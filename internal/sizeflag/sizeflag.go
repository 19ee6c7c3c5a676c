// Package sizeflag parses byte sizes and rates given on the command line
// or in FERRY_* environment variables: a plain byte count ("4096") or a
// number with a unit, decimal ("10G" is 10×10⁹ bytes, "kB", "MB") or
// binary ("512KiB", "1.5 MiB"), case-insensitive, as go-humanize's
// ParseBytes reads them. A rate may end in "/s" ("50MiB/s").
package sizeflag

import (
	"errors"
	"fmt"
	"math"
	"strings"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"
)

// ErrSize is wrapped by every error Parse returns.
var ErrSize = errors.New("want a byte count such as 4096, 512KiB, 1.5MiB or 10G")

// Parse returns the number of bytes s names; see the package doc for the
// syntax. Negative numbers, unknown units and sizes above 2⁶³-1 bytes
// are errors wrapping ErrSize.
func Parse(s string) (int64, error) {
	t := strings.TrimSpace(s)
	if t == "" || t[0] < '0' || t[0] > '9' {
		// ParseBytes would report strconv's "parsing \"\"" for "-1" or "big".
		return 0, fmt.Errorf("%w, not %q", ErrSize, s)
	}
	n, err := humanize.ParseBytes(t)
	if err != nil || n > math.MaxInt64 {
		return 0, fmt.Errorf("%w, not %q", ErrSize, s)
	}
	return int64(n), nil
}

// ParseRate is Parse for a rate in bytes per second: it also takes a
// trailing "/s" ("50MiB/s").
func ParseRate(s string) (int64, error) {
	return Parse(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
}

// Format writes n as the shortest exact binary size ("16MiB", "4KiB"), or
// as a plain byte count when no binary unit divides it.
func Format(n int64) string {
	units := []string{"", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for n != 0 && n%1024 == 0 && i < len(units)-1 {
		n /= 1024
		i++
	}
	return fmt.Sprintf("%d%s", n, units[i])
}

// Value is a size flag's value: a cli.Generic (and flag.Value) whose Set
// takes Parse's syntax. The zero Value is 0 bytes.
type Value struct {
	n    int64
	rate bool
}

// New returns a Value of n bytes, the flag's default.
func New(n int64) *Value { return &Value{n: n} }

// NewRate returns a Value of n bytes per second that also takes a "/s"
// suffix.
func NewRate(n int64) *Value { return &Value{n: n, rate: true} }

// Set parses s into v; see Parse.
func (v *Value) Set(s string) error {
	parse := Parse
	if v.rate {
		parse = ParseRate
	}
	n, err := parse(s)
	if err != nil {
		return err
	}
	v.n = n
	return nil
}

// String formats v as Format does, with "/s" for a rate other than 0.
func (v *Value) String() string {
	if v == nil {
		return "0"
	}
	if v.rate && v.n != 0 {
		return Format(v.n) + "/s"
	}
	return Format(v.n)
}

// Bytes returns v in bytes (per second for a rate).
func (v *Value) Bytes() int64 { return v.n }

// Flag returns a cli flag for a size named name with the default def,
// read from the environment variable env with the same syntax.
func Flag(name string, def int64, env, usage string) *cli.GenericFlag {
	return &cli.GenericFlag{Name: name, Value: New(def), EnvVars: []string{env}, Usage: usage}
}

// RateFlag is Flag for a rate in bytes per second.
func RateFlag(name string, def int64, env, usage string) *cli.GenericFlag {
	return &cli.GenericFlag{Name: name, Value: NewRate(def), EnvVars: []string{env}, Usage: usage}
}

// Get returns the bytes of the size flag name of c; 0 when c has no such
// flag.
func Get(c *cli.Context, name string) int64 {
	if v, ok := c.Generic(name).(*Value); ok {
		return v.n
	}
	return 0
}
