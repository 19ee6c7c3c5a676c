package main

import (
	"bufio"
	"errors"
	"os"
	"strconv"
	"strings"
	"time"
)

// quietLimit is the busy fraction of all CPUs, measured over a pause, above
// which the machine is taken to be running something else. An idle VM
// stays well under it.
const quietLimit = 0.10

// busyDuring sleeps for d and returns the fraction of all CPUs' time that
// was busy meanwhile, from /proc/stat.
func busyDuring(d time.Duration) (float64, error) {
	busy0, total0, err := cpuTimes()
	if err != nil {
		time.Sleep(d)
		return 0, err
	}
	time.Sleep(d)
	busy1, total1, err := cpuTimes()
	if err != nil || total1 <= total0 {
		return 0, errors.Join(err, errors.New("/proc/stat did not advance"))
	}
	return float64(busy1-busy0) / float64(total1-total0), nil
}

// cpuTimes returns busy and total jiffies of all CPUs: the first line of
// /proc/stat is "cpu user nice system idle iowait irq softirq steal ...".
func cpuTimes() (busy, total uint64, err error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close() //nolint:errcheck // opened read-only
	line, err := bufio.NewReader(f).ReadString('\n')
	if err != nil {
		return 0, 0, err
	}
	fields := strings.Fields(line)
	if len(fields) < 9 || fields[0] != "cpu" {
		return 0, 0, errors.New("unexpected /proc/stat")
	}
	for i, s := range fields[1:9] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, err
		}
		total += v
		if i != 3 && i != 4 { // idle, iowait
			busy += v
		}
	}
	return busy, total, nil
}
