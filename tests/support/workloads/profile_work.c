/*
 * profile ground truth: a thread that spends known shares of its CPU time in
 * two named functions, and a process that only sleeps.
 *
 *   burn         the main thread: alternates hot_a and hot_b, giving hot_a
 *                SHARE_A of each cycle by its own CPU clock
 *                (CLOCK_THREAD_CPUTIME_ID), cycles of random length (1..16
 *                ms) so that no sampling frequency can beat in step with them
 *   sleeper      a child process with the same comm that sleeps the whole
 *                time: in scope, never on a CPU
 *
 * Protocol (tests/support/harness.py Workload): prints "ready", burns for SECONDS on
 * "go", then prints one JSON line with its pids and each function's CPU time
 * in microseconds, and exits on the next line (the child with it). Built with -fno-omit-frame-pointer.
 *
 *   profile-work SECONDS [SHARE_A_PERCENT]
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long sink;

static long long cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static long long wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/* Pure computation, no calls: every sample inside is this function's own. The word kept on the
 * stack makes gcc set up the frame pointer even in a leaf (it omits it where no stack is used, and
 * the frame-pointer walk would then skip the caller). */
__attribute__((noinline)) unsigned long hot_a(unsigned long n)
{
    volatile unsigned long keep = n;
    unsigned long x = keep;
    for (unsigned long i = 0; i < n; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    __asm__ volatile("" ::: "memory");
    return x;
}

__attribute__((noinline)) unsigned long hot_b(unsigned long n)
{
    volatile unsigned long keep = n;
    unsigned long x = keep;
    for (unsigned long i = 0; i < n; i++)
        x = (x ^ (x >> 7)) * 2862933555777941757UL + 3037000493UL;
    __asm__ volatile("" ::: "memory");
    return x;
}

/* Runs fn until it has used `us` of this thread's CPU; returns the CPU time it used. */
static long long spend(unsigned long (*fn)(unsigned long), long long us)
{
    long long t0 = cpu_us(), t;
    do {
        sink += fn(20000);  /* ~20-40 us a call: the clock reads between calls are a small share */
        t = cpu_us();
    } while (t - t0 < us);
    return t - t0;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 3.0;
    int share_a = argc > 2 ? atoi(argv[2]) : 70;
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    pid_t child = fork();
    if (child == 0) {
        for (;;)
            pause();   /* asleep until killed */
    }
    printf("ready\n");
    if (!fgets(line, sizeof(line), stdin))
        return 1;
    long long a = 0, b = 0, end = wall_us() + (long long)(seconds * 1e6);
    unsigned int seed = 12345;
    while (wall_us() < end) {
        long long cycle = 1000 + rand_r(&seed) % 15000;   /* 1..16 ms of CPU */
        a += spend(hot_a, cycle * share_a / 100);
        b += spend(hot_b, cycle * (100 - share_a) / 100);
    }
    printf("{\"pid\": %d, \"tid\": %ld, \"sleeper\": %d, \"hot_a_us\": %lld, \"hot_b_us\": %lld}\n",
           getpid(), (long)syscall(SYS_gettid), child, a, b);
    fgets(line, sizeof(line), stdin);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 0;
}
