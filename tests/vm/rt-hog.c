/* rt-hog: the guest side of `cargo xtask vm-test --lockup-selftest`.
 *
 * Drives the guest kernel into the stall of 2026-12-04: RCU's grace-period kthread, runnable in
 * the middle of a grace period, gets no CPU ("rcu_preempt kthread starved ... RCU_GP_WAIT_FQS"),
 * and the kernel reports an RCU stall after rcu_cpu_stall_timeout. The harness must recognise it,
 * gather backtraces and end the run.
 *
 * How: the kthread is pinned to the last CPU; a child keeps grace periods coming (membarrier's
 * global command waits for one); once the kthread's stack shows it inside a grace period
 * (rcu_gp_fqs_loop), a SCHED_FIFO 99 busy loop takes that CPU with RT throttling off. If the
 * grace period ended in between, the hog stops and it tries again. The other CPUs stay usable, so
 * the console and sysrq still work. Built static by the harness (`cc -static`).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        perror(path);
        return -1;
    }
    return 0;
}

static int read_file(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = 0;
    fclose(f);
    return 0;
}

static pid_t find_rcu_kthread(void)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    char path[300], comm[64];
    while (d && (e = readdir(d))) {
        snprintf(path, sizeof path, "/proc/%s/comm", e->d_name);
        if (read_file(path, comm, sizeof comm) == 0 && strcmp(comm, "rcu_preempt\n") == 0) {
            closedir(d);
            return atoi(e->d_name);
        }
    }
    if (d)
        closedir(d);
    return -1;
}

/* Inside a grace period: its kernel stack is in the force-quiescent-state loop. */
static int in_grace_period(pid_t kthread)
{
    char path[64], stack[4096];
    snprintf(path, sizeof path, "/proc/%d/stack", kthread);
    return read_file(path, stack, sizeof stack) == 0 && strstr(stack, "rcu_gp_fqs_loop") != NULL;
}

static pid_t start_on(int cpu, int fifo, void (*body)(void))
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    struct sched_param param = { .sched_priority = 99 };
    if (sched_setaffinity(0, sizeof set, &set) != 0 ||
        (fifo && sched_setscheduler(0, SCHED_FIFO, &param) != 0)) {
        perror("rt-hog: pinning");
        _exit(1);
    }
    body();
    _exit(0);
}

static void spin(void)
{
    for (volatile unsigned long n = 0;; n++)
        ;
}

static void grace_periods(void)
{
    for (;;)
        syscall(__NR_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0);
}

int main(void)
{
    int last = (int)sysconf(_SC_NPROCESSORS_ONLN) - 1;
    pid_t kthread = find_rcu_kthread();
    if (last < 1 || kthread < 0) {
        fprintf(stderr, "rt-hog: needs 2 CPUs and the rcu_preempt kthread\n");
        return 1;
    }
    if (write_file("/proc/sys/kernel/sched_rt_runtime_us", "-1\n") != 0)
        return 1;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(last, &set);
    if (sched_setaffinity(kthread, sizeof set, &set) != 0) {
        perror("rt-hog: pinning rcu_preempt");
        return 1;
    }
    /* This process watches from CPU 0, which the hog leaves alone. */
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) {
        perror("rt-hog: pinning itself");
        return 1;
    }
    start_on(0, 0, grace_periods);
    for (int attempt = 1; attempt <= 200; attempt++) {
        while (!in_grace_period(kthread))
            usleep(1000);
        pid_t hog = start_on(last, 1, spin);
        usleep(500000);
        if (in_grace_period(kthread)) {
            printf("rt-hog: rcu_preempt (pid %d) starved on CPU %d in a grace period (attempt %d)\n",
                   kthread, last, attempt);
            fflush(stdout);
            for (;;)
                pause();
        }
        kill(hog, SIGKILL);
        waitpid(hog, NULL, 0);
    }
    fprintf(stderr, "rt-hog: never caught rcu_preempt inside a grace period\n");
    return 1;
}
