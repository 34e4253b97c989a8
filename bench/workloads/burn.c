/*
 * burn: pure computation in a noinline function, one thread: what a CPU
 * profiler samples. The profile benchmark's workload.
 *
 *   burn ITERATIONS HZ
 *
 * Resident, so a profiler can scope to its pid once and time several rounds:
 * prints {"pid": P}, then for each line on stdin runs one round of ITERATIONS
 * ("go") and prints {"seconds", "cpu", "events"}: its own wall clock, its own
 * CPU time, and the samples a per-CPU timer at HZ takes of that CPU time
 * (cpu x HZ: the events the tools are priced per), or runs rounds until killed
 * ("spin"). Exits at EOF.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile unsigned long sink;

__attribute__((noinline)) unsigned long burn(unsigned long n)
{
    volatile unsigned long keep = n;   /* a stack slot: gcc then keeps the frame pointer in this leaf */
    unsigned long x = keep;
    for (unsigned long i = 0; i < n; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return x;
}

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 10) : 100000000UL;
    double hz = argc > 2 ? atof(argv[2]) : 999;
    char line[16];
    printf("{\"pid\": %d}\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        int spin = strncmp(line, "spin", 4) == 0;
        do {
            double t = clock_s(CLOCK_MONOTONIC), c = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            sink += burn(n);
            t = clock_s(CLOCK_MONOTONIC) - t;
            c = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c;
            if (!spin) {
                printf("{\"seconds\": %.6f, \"cpu\": %.6f, \"events\": %ld}\n", t, c, (long)(c * hz + 0.5));
                fflush(stdout);
            }
        } while (spin);
    }
    return 0;
}
