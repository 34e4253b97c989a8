/*
 * lockloop: lock/unlock pairs through noinline pool_lock/pool_unlock (which
 * start with push %rbp: emulated at a uprobe) around a pthread mutex (whose
 * functions start with mov in glibc 2.36: single-stepped). The lockhold
 * benchmark's workload.
 *
 *   lockloop PAIRS
 *
 * Resident, so a probe can attach to its pid once and time several rounds:
 * prints {"pid": P}, then for each line on stdin runs one round of PAIRS pairs
 * ("go") and prints {"seconds", "cpu", "events"} (its own wall clock, its own
 * CPU time, the pairs it ran), or runs rounds until killed ("spin"). Exits at EOF.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;

__attribute__((noinline)) void pool_lock(pthread_mutex_t *p)
{
    pthread_mutex_lock(p);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) void pool_unlock(pthread_mutex_t *p)
{
    pthread_mutex_unlock(p);
    __asm__ volatile("" ::: "memory");
}

static double clock_s(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 100000;
    char line[16];
    printf("{\"pid\": %d}\n", (int)getpid());
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        int spin = strncmp(line, "spin", 4) == 0;
        do {
            double t = clock_s(CLOCK_MONOTONIC), c = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            for (long i = 0; i < n; i++) {
                pool_lock(&m);
                pool_unlock(&m);
            }
            t = clock_s(CLOCK_MONOTONIC) - t;
            c = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c;
            if (!spin) {
                printf("{\"seconds\": %.6f, \"cpu\": %.6f, \"events\": %ld}\n", t, c, n);
                fflush(stdout);
            }
        } while (spin);
    }
    return 0;
}
