package main

import (
	"os"
	"strconv"
	"strings"
)

// ticks is the kernel's clock tick (USER_HZ), 100 on Linux.
const ticks = 100

// cpuSample is CPU time used so far, in seconds: by the server, by the
// PostgreSQL processes under it, by this tool, and by the whole machine
// (busy time summed over cores), so a run can tell its share from other load.
type cpuSample struct {
	Server, Postgres, Client, Machine float64
}

// sampleCPU reads the CPU times of the servers (with their descendants
// counted as PostgreSQL) and of this process.
func sampleCPU(servers ...int) cpuSample {
	var s cpuSample
	procs := readProcs()
	for _, server := range servers {
		s.Server += procs[server].cpu
		for pid := range procs {
			if pid != server && descends(procs, pid, server) {
				s.Postgres += procs[pid].cpu
			}
		}
	}
	s.Client = procs[os.Getpid()].cpu
	if data, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(data), "\n")
		f := strings.Fields(line)
		for i, v := range f[1:] {
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			n, _ := strconv.ParseFloat(v, 64)
			s.Machine += n / ticks
		}
	}
	return s
}

func (s cpuSample) minus(o cpuSample) cpuSample {
	return cpuSample{s.Server - o.Server, s.Postgres - o.Postgres, s.Client - o.Client, s.Machine - o.Machine}
}

type proc struct {
	ppid int
	cpu  float64
}

func readProcs() map[int]proc {
	out := map[int]proc{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// The command name may hold spaces: fields start after its ')'.
		rest := string(data)
		if i := strings.LastIndexByte(rest, ')'); i >= 0 {
			rest = rest[i+1:]
		}
		f := strings.Fields(rest)
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		utime, _ := strconv.ParseFloat(f[11], 64)
		stime, _ := strconv.ParseFloat(f[12], 64)
		out[pid] = proc{ppid: ppid, cpu: (utime + stime) / ticks}
	}
	return out
}

func descends(procs map[int]proc, pid, ancestor int) bool {
	for range 16 {
		p, ok := procs[pid]
		if !ok || p.ppid <= 1 {
			return false
		}
		if p.ppid == ancestor {
			return true
		}
		pid = p.ppid
	}
	return false
}
