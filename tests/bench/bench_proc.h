/*
 * bench_proc.h: readers of /proc for the benchmarks: CPU time and memory of
 * a process or thread, the machine's CPU model, this process's threads.
 */
#ifndef BENCH_PROC_H
#define BENCH_PROC_H

#include <stddef.h>
#include <sys/types.h>

/* utime + stime, in clock ticks, from a /proc/.../stat file; -1 on error. */
long long proc_cpu_ticks(const char *path);

/* utime + stime of process pid, in clock ticks; -1 on error. */
long long pid_cpu_ticks(pid_t pid);

/* A "Vm...:" field (e.g. "VmRSS") of /proc/<pid>/status in kB; -1 on error. */
long proc_status_kb(pid_t pid, const char *field);

/* The "model name" of the first CPU in /proc/cpuinfo into out[size]; "unknown" if none. */
void cpu_model(char *out, size_t size);

/* The thread ids of this process into out[max]; returns how many. */
size_t self_tids(pid_t *out, size_t max);

#endif /* BENCH_PROC_H */
